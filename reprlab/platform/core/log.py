"""Progress lines on stdout (the driver, every worker, and methods that report what they did)."""

from __future__ import annotations

import sys


def say(line: str) -> None:
    """One progress line on stdout. Not ``print``: Ray Train patches it in workers to also log
    every line through the root logger, which shows each line twice on the driver."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def set_verbose(on: bool) -> None:
    """``--verbose``: Ray's own log lines, warnings and Tune's tables come back (processes started
    later, Ray's workers included, read it from the environment)."""
    import os

    os.environ["REPRLAB_VERBOSE"] = "1" if on else "0"


def verbose() -> bool:
    import os

    return os.environ.get("REPRLAB_VERBOSE") == "1"


_RAY_NOISE_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.tune")


def quiet_ray() -> None:
    """Ray's own lines filtered to what a user needs, unless ``--verbose``: from Ray's worker
    processes only our progress lines (``[reprlab] ...``) reach the terminal (not the controller's
    PreemptionWatcher error, the process-group and worker-group set-up lines, Ray's stack dumps);
    the driver's token-authentication warning is dropped (token authentication stays on). Real
    errors reach the user as the CLI's one line."""
    import logging

    if verbose():
        return
    import os

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's verbose=0 then prints no tables at all
    for name in _RAY_NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return
    original = ray_worker.print_worker_logs
    if getattr(original, "_reprlab_filter", False):
        return

    def print_worker_logs(data, print_file, *args, **kwargs):
        lines = [line for line in data.get("lines", []) if _ours(line)]
        if lines:
            original({**data, "lines": lines}, print_file, *args, **kwargs)

    print_worker_logs._reprlab_filter = True
    ray_worker.print_worker_logs = print_worker_logs


def _ours(line: str) -> bool:
    return line.lstrip().startswith(("[reprlab]", "reprlab:"))


def ray_init(**kwargs) -> None:
    """``ray.init`` that keeps this process's Python signal handlers: Ray's core worker installs
    its own SIGTERM handler (a stack dump, then abort), which would bypass the CLI's one line."""
    import signal

    import ray

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    if not verbose():
        import logging

        kwargs.setdefault("logging_level", logging.WARNING)  # no "Started a local Ray instance" line
    ray.init(**kwargs)
    for s, handler in saved.items():
        if callable(handler):
            try:
                signal.signal(s, handler)
            except ValueError:  # not the main thread
                pass
