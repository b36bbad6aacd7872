"""Compatibility with the existing ePIC agents (their v28 dialect), tested with a fixture that
speaks it.
"""
