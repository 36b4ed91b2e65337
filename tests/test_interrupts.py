"""Signals during a search stop it at the next safe point, not wherever the main thread happens to be."""

import os
import signal

import pytest

from automtl import interrupts


def test_a_signal_during_a_search_is_raised_at_the_next_check_and_a_second_one_at_once():
    before = signal.getsignal(signal.SIGINT)
    with interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)  # handled here without raising
        assert interrupts.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        with pytest.raises(KeyboardInterrupt):  # a user who insists gets out at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before and not interrupts.requested()
    interrupts.check()  # nothing pending once the search is over


def test_a_worker_waits_for_its_next_safe_point_however_often_it_is_asked(monkeypatch):
    monkeypatch.setattr(interrupts, "_requested", type(interrupts._requested)())
    previous = {number: signal.getsignal(number) for number in interrupts.SIGNALS}
    try:
        interrupts.defer()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
