"""tkp_pcl.process: signals held back while a process is started, delivered once after."""

import os
import signal

from tkp_pcl.process import signals_held


def test_signals_held_delivers_after_the_block():
    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert got == []
        assert got == [signal.SIGTERM]  # once
    finally:
        signal.signal(signal.SIGTERM, previous)
