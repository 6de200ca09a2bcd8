"""Bounding ``KVM_RUN`` in time: a per-thread POSIX timer whose signal only KVM_RUN can see.

A wedged vCPU (a guest spinning without exits, realkernel.md #295/#298) never returns from ``KVM_RUN``
unless a signal is pending. The watchdog uses the QEMU scheme:

* a periodic POSIX timer (``timer_create`` with ``SIGEV_THREAD_ID``) sends :data:`WATCHDOG_SIGNAL` to
  the thread that runs the vCPU;
* that signal is **blocked** in the thread (``pthread_sigmask``) but **unblocked while in KVM_RUN**
  (``KVM_SET_SIGNAL_MASK``), so it makes ``KVM_RUN`` return ``-EINTR`` with ``KVM_EXIT_INTR`` and is never
  delivered to a handler: no Python handler is installed, nothing clashes with pytest-timeout's SIGALRM,
  and the process cannot be killed by it;
* after ``EINTR`` the pending signal is consumed with ``sigtimedwait`` (zero timeout).
"""

from __future__ import annotations

import ctypes
import signal
import threading

from . import libc

WATCHDOG_SIGNAL = signal.SIGRTMIN + 6
CLOCK_MONOTONIC = 1
SIGEV_THREAD_ID = 4

_libc = ctypes.CDLL(None, use_errno=True)


class _Sigevent(ctypes.Structure):
    """``struct sigevent`` (64 bytes on x86-64); ``tid`` is ``sigev_notify_thread_id``."""

    _fields_ = (
        ("sigev_value", ctypes.c_uint64),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("tid", ctypes.c_int),
        ("pad", ctypes.c_int * 11),
    )


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


_timer_create = _libc.timer_create
_timer_create.argtypes = [ctypes.c_int, ctypes.POINTER(_Sigevent), ctypes.POINTER(ctypes.c_void_p)]
_timer_settime = _libc.timer_settime
_timer_settime.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
_timer_delete = _libc.timer_delete
_timer_delete.argtypes = [ctypes.c_void_p]


def kvm_sigset_without_watchdog() -> int:
    """The kernel sigset (bit ``signo-1``) KVM_RUN should run with: the thread's mask minus the watchdog."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    mask = 0
    for sig in blocked:
        if sig != WATCHDOG_SIGNAL:
            mask |= 1 << (int(sig) - 1)
    return mask


class Watchdog:
    """A periodic tick for the vCPU-running thread; a request times out at the first tick past its deadline.

    The timer is armed once (``timer_settime`` with an interval of :attr:`tick` seconds), so a request
    costs no extra system call: it notes its start time, and when a tick makes ``KVM_RUN`` return
    ``-EINTR`` the runner consumes the signal and either goes on (deadline not reached) or reports a
    timeout. A POSIX timer queues at most one signal at a time (later expirations only count overruns),
    so an idle vCPU thread holds at most one pending, blocked tick.
    """

    def __init__(self, tick: float) -> None:
        self.tid = threading.get_native_id()
        signal.pthread_sigmask(signal.SIG_BLOCK, [WATCHDOG_SIGNAL])
        ev = _Sigevent(sigev_signo=WATCHDOG_SIGNAL, sigev_notify=SIGEV_THREAD_ID, tid=self.tid)
        self._timer = ctypes.c_void_p()
        libc.check(_timer_create(CLOCK_MONOTONIC, ctypes.byref(ev), ctypes.byref(self._timer)), "timer_create")
        self.tick = 0.0
        self.set_tick(tick)

    def _settime(self, seconds: float) -> None:
        spec = _Itimerspec()
        for ts in (spec.it_interval, spec.it_value):
            ts.tv_sec = int(seconds)
            ts.tv_nsec = int((seconds - int(seconds)) * 1e9)
        libc.check(_timer_settime(self._timer, 0, ctypes.byref(spec), None), "timer_settime")

    def set_tick(self, tick: float) -> None:
        if tick != self.tick:
            self._settime(tick)
            self.tick = tick

    @staticmethod
    def consume() -> bool:
        """Take a pending tick, if any (it stays blocked outside KVM_RUN)."""
        return signal.sigtimedwait([WATCHDOG_SIGNAL], 0) is not None

    def close(self) -> None:
        if self._timer is not None:
            self._settime(0)
            _timer_delete(self._timer)
            self._timer = None  # type: ignore[assignment]
            if threading.get_native_id() == self.tid:
                self.consume()
