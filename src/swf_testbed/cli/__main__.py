from swf_testbed.cli import main

main()
