"""Run shell commands one after the other, `python -m MODULE ...` and `python -c CODE` ones inside this process
(the imports, most of a small command's time, are paid once), anything else as a subprocess. Used by
tests/test_docs_commands.py:

    python tests/run_commands.py SPEC.json    # SPEC: [{"argv": [...], "cwd": "..."}, ...]

Prints, for each command, a header line and then one result line: RESULT {"index", "rc", "seconds", "cpu"}
(cpu: user + system seconds of this process and the children it waited for).
"""
from __future__ import annotations

import json
import os
import resource
import runpy
import subprocess
import sys
import time
import traceback

HEADER, RESULT = "=== COMMAND", "=== RESULT"


def python_module(argv: list[str]) -> str | None:
    """MODULE when argv is `python[3] -m MODULE ...`."""
    return argv[2] if python_flag(argv) == "-m" else None


def python_flag(argv: list[str]) -> str | None:
    """-m or -c when argv is `python[3] -m MODULE ...` or `python[3] -c CODE ...`."""
    if len(argv) >= 3 and os.path.basename(argv[0]) in ("python", "python3") and argv[1] in ("-m", "-c"):
        return argv[1]
    return None


def run_in_process(flag: str, target: str, args: list[str]) -> int:
    """`python -m MODULE args` or `python -c CODE args`, here."""
    sys.argv = [target if flag == "-m" else "-c", *args]
    try:
        if flag == "-m":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:  # argparse, hydra and explicit exits
        if isinstance(e.code, int) or e.code is None:
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("message"): what the interpreter would print
        return 1
    except BaseException:  # noqa: B036  (a command's crash is its result, the next command still runs)
        traceback.print_exc()
        return 1
    return 0


def cpu_seconds() -> float:
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                          resource.RUSAGE_CHILDREN)))


def main(spec_path: str) -> None:
    for index, command in enumerate(json.loads(open(spec_path).read())):
        argv, cwd = command["argv"], command["cwd"]
        print(f"{HEADER} {index}: {' '.join(argv)}", flush=True)
        os.chdir(cwd)
        t, cpu = time.perf_counter(), cpu_seconds()
        flag = python_flag(argv)
        if flag is not None:
            rc = run_in_process(flag, argv[2], argv[3:])
        else:
            rc = subprocess.run(argv, cwd=cwd).returncode
        sys.stdout.flush()
        sys.stderr.flush()
        print(f"{RESULT} " + json.dumps({"index": index, "rc": rc, "seconds": round(time.perf_counter() - t, 1),
                                         "cpu": round(cpu_seconds() - cpu, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
