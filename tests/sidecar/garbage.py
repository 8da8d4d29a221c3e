"""What the cyclic garbage collector would have to free that the sidecar's own code made.

Every reference cycle left behind per request is work for the cyclic GC, and a GC
pass stops the event loop: every stream waits for it (bench/README.md measured
60-90 ms full collections before the startup heap was frozen). The request path
is meant to leave none; tests run traffic with the GC disabled, then ask here.
"""

from __future__ import annotations

import gc

PACKAGE_DIR = "/sidecar_audit/"


def _ours(obj: object) -> str | None:
    owner = getattr(obj, "__self__", obj)  # a bound method counts as its object
    kind = type(owner)
    if kind.__module__.startswith("sidecar_audit"):
        return kind.__qualname__
    code = getattr(obj, "f_code", None) or getattr(obj, "cr_code", None)  # frames, coroutines
    if code is not None and PACKAGE_DIR in code.co_filename:
        return f"{kind.__name__} of {code.co_qualname}"
    return None


def our_garbage() -> list[str]:
    """Collect everything now; the sidecar-made objects that only the cyclic GC could free.

    They are freed on the way out: DEBUG_SAVEALL only parks them in `gc.garbage`, and
    clearing that list leaves them cyclic garbage again, which every later call (this
    test's or the next one's) would report once more.
    """
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sorted(name for obj in gc.garbage if (name := _ours(obj)) is not None)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
