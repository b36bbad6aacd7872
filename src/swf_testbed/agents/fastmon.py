"""The fast-monitoring agent: samples TFs of ready STFs for fast processing.

``stf_ready`` (data topic) → with probability ``stf_sampling_rate`` the STF is
sampled: a contiguous block of about ``tf_sample_fraction`` of its TFs,
placed at random → ``tf_file_registered`` (``tf_first``/``tf_last``: TF
indices within the STF, 0-based and inclusive; ``tf_count``; the sample's
share of the STF's size; the STF's name) on the data topic.

Parameters come from the run: the ``fast_processing`` section of
``run_imminent``'s conditions (present when the workflow config has one).
For a run without it the options ``stf_sampling_rate`` (default: none, the
run is not sampled) and ``tf_sample_fraction`` (0.15) apply. ``seed`` makes
the sampling reproducible: each decision is drawn from a generator seeded by
(seed, run, STF name), so it does not depend on the order of handling.
"""

from __future__ import annotations

import random
from typing import Any

from swf_testbed.agents.runs import RunFollowingAgent, RunInfo
from swf_testbed.agents.runtime import handles
from swf_testbed.messages import StfReady, TfFileRegistered
from swf_testbed.mq.destinations import data_topic


def tf_filename(stf_filename: str, tf_first: int, tf_last: int) -> str:
    """``swf.000001.000003.stf`` → ``swf.000001.000003.tf00150-00299.tf``."""
    stem = stf_filename[: -len(".stf")] if stf_filename.endswith(".stf") else stf_filename
    return f"{stem}.tf{tf_first:05d}-{tf_last:05d}.tf"


class FastMonAgent(RunFollowingAgent):
    agent_type = "fastmon"

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        stf_sampling_rate: float | None = None,
        tf_sample_fraction: float = 0.15,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, namespace, **kwargs)
        if stf_sampling_rate is not None and not 0 <= stf_sampling_rate <= 1:
            raise ValueError("stf_sampling_rate must be between 0 and 1")
        if not 0 < tf_sample_fraction <= 1:
            raise ValueError("tf_sample_fraction must be in (0, 1]")
        self.stf_sampling_rate = stf_sampling_rate
        self.tf_sample_fraction = tf_sample_fraction
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**63)

    # ------------------------------------------------------------------ sampling

    def parameters(self, info: RunInfo) -> tuple[float, float]:
        """(sampling rate, sample fraction) for a run; rate 0 when the run is not sampled."""
        fp = info.fast_processing
        if fp is not None:
            rate = info.number(
                "stf_sampling_rate", self.stf_sampling_rate or 0.0, "fast_processing"
            )
            fraction = info.number("tf_sample_fraction", self.tf_sample_fraction, "fast_processing")
        else:
            rate, fraction = self.stf_sampling_rate or 0.0, self.tf_sample_fraction
        return float(rate), float(fraction)

    def sample(self, msg: StfReady, info: RunInfo) -> tuple[int, int, int] | None:
        """(tf_first, tf_last, TFs in the STF) of the block to take, or None if not sampled."""
        rate, fraction = self.parameters(info)
        rng = random.Random(f"{self.seed}:{msg.run_id}:{msg.filename}")
        if rate <= 0 or rng.random() >= rate:
            return None
        tf_count = msg.tf_count or int(info.number("tf_per_stf", 0) or 0)
        if tf_count <= 0:
            return None
        n = min(tf_count, max(1, round(tf_count * fraction)))
        first = rng.randint(0, tf_count - n)
        return first, first + n - 1, tf_count

    @handles(StfReady)
    def on_stf_ready(self, msg: StfReady) -> None:
        self.count("stf_seen")
        info = self.runs.lookup(msg.run_id, msg.execution_id)
        block = self.sample(msg, info)
        if block is None:
            self.count("stf_not_sampled")
            return
        first, last, tf_total = block
        n = last - first + 1
        self.send(
            data_topic(self.namespace),
            self.message(
                TfFileRegistered,
                execution_id=msg.execution_id,
                run_id=msg.run_id,
                state=msg.state,
                substate=msg.substate,
                tf_filename=tf_filename(msg.filename, first, last),
                stf_filename=msg.filename,
                tf_first=first,
                tf_last=last,
                tf_count=n,
                size_bytes=msg.size_bytes * n // tf_total,
            ),
        )
        self.count("stf_sampled")
        self.count("tf_sampled", n)
