"""tcmalloc for the stages' kernel (addlib/malloc.py, issue 37): which library is found, the arguments that put it
in the kernel's environment, and the fact that matters: a tiny ADD run computes every logged loss and every
sampled pixel exactly as under the system's allocator (the slow path it replaces), in a process that really has it
mapped. The kernel `make` registered preloads it, as the stages run it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from addlib import malloc

WORKER = Path(__file__).with_name("distributed_worker.py")


def _lib(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"")
    return folder / name


def test_the_search_takes_the_first_folder_with_the_library_and_its_shortest_name(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    _lib(b, "libtcmalloc_minimal.so.4.5.10")
    _lib(b, "libtcmalloc_minimal.so.4")
    _lib(tmp_path / "c", "libtcmalloc_minimal.so")
    assert malloc.find_tcmalloc({}, [a, b, tmp_path / "c"]) == b / "libtcmalloc_minimal.so.4"
    assert malloc.find_tcmalloc({}, [a, tmp_path / "missing"]) is None
    assert malloc.kernel_env_args({}, [a]) == []
    assert malloc.kernel_env_args({}, [b]) == ["--env", "LD_PRELOAD", str(b / "libtcmalloc_minimal.so.4")]


def test_the_variable_names_the_library_or_turns_it_off(tmp_path):
    found = [_lib(tmp_path / "lib", "libtcmalloc_minimal.so.4").parent]
    mine = _lib(tmp_path / "mine", "libtcmalloc_minimal.so.4")
    assert malloc.find_tcmalloc({malloc.ENV: str(mine)}, found) == mine
    assert malloc.find_tcmalloc({malloc.ENV: "none"}, found) is None
    assert malloc.kernel_env_args({malloc.ENV: "None"}, found) == []
    with pytest.raises(FileNotFoundError, match="ADDLIB_TCMALLOC=.*no such file"):
        malloc.find_tcmalloc({malloc.ENV: str(tmp_path / "nope.so")}, found)


def test_the_cli_prints_the_kernel_arguments_and_a_one_line_error(tmp_path):
    mine = _lib(tmp_path, "libtcmalloc_minimal.so.4")
    run = lambda env, *a: subprocess.run([sys.executable, "-m", "addlib.malloc", *a], capture_output=True,  # noqa
                                         text=True, env={**os.environ, malloc.ENV: env})
    out = run(str(mine), "--kernel-env")
    assert out.returncode == 0 and out.stdout.split() == ["--env", "LD_PRELOAD", str(mine)]
    assert run("none", "--kernel-env").stdout.strip() == ""
    assert "system's allocator" in run("none").stdout
    bad = run(str(tmp_path / "nope.so"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ADDLIB_TCMALLOC=")


def _worker(tmp: Path, preload: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {"OMP_NUM_THREADS": "1"}
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    out = tmp / "run.json"
    proc = subprocess.run([sys.executable, str(WORKER), "--out", str(out), "--ckpt", str(tmp / "ckpt")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_a_tiny_add_run_under_tcmalloc_equals_the_system_allocators_exactly(tmp_path):
    lib = malloc.find_tcmalloc()
    if lib is None:
        pytest.skip("no tcmalloc on this machine (make's tcmalloc target installs Debian's libtcmalloc-minimal4)")
    plain = _worker(tmp_path / "plain", None)
    fast = _worker(tmp_path / "tcmalloc", lib)
    assert plain["tcmalloc"] is None and fast["tcmalloc"] is not None and "tcmalloc" in fast["tcmalloc"]
    assert len(plain["history"]) == 3 and plain["n_images"] == 10
    untimed = lambda run: [{k: v for k, v in r.items() if k != "steps_per_second"} for r in run["history"]]  # noqa
    assert len(untimed(plain)[0]) >= 9  # the step, the losses, the logits, R1, the learning rate
    assert untimed(fast) == untimed(plain)  # every logged loss, logit and R1, bit for bit
    assert fast["images"] == plain["images"]


def test_the_registered_kernel_preloads_what_the_search_finds():
    """The kernel `make` registered (the one every stage notebook runs on) names the library found here, and a
    kernel started from it has it mapped."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_client.manager import start_new_kernel

    try:
        spec = KernelSpecManager().get_kernel_spec("addlib")
    except NoSuchKernel:
        pytest.skip("no 'addlib' kernel registered (make setup registers it)")
    lib = malloc.find_tcmalloc()
    if lib is None:
        assert "LD_PRELOAD" not in spec.env
        return
    assert Path(spec.env["LD_PRELOAD"]) == lib.absolute()
    km, kc = start_new_kernel(kernel_name="addlib")
    try:
        got = []
        kc.execute_interactive("from addlib import malloc; print(malloc.loaded())", timeout=60,
                               output_hook=lambda m: got.append(m["content"].get("text", "")))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "tcmalloc" in "".join(got)


def test_the_benchmark_alternates_the_allocators_in_fresh_processes(tmp_path):
    """python -m addlib.malloc_check (a benchmark; its times are not asserted) on the smoke sizes: one process per
    measurement, the system's allocator and tcmalloc taking turns, each row saying which it really ran with."""
    from addlib import malloc_check
    from conftest import ROOT

    if malloc.find_tcmalloc() is None:
        pytest.skip("no tcmalloc on this machine")
    assert malloc_check.main(["--steps", "2", "--settle", "3"]) == 2
    out = tmp_path / "a.json"
    assert malloc_check.main(["--params", str(ROOT / "params.yaml"), "--profile", str(ROOT / "profiles" / "smoke.yaml"),
                              "--steps", "2", "--settle", "1", "--pairs", "1", "--text-width", "16",
                              "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["allocator"] == "system" for r in result["runs"]] == [True, False]
    assert "tcmalloc" in result["runs"][1]["allocator"]
    assert all(r["add_seconds_per_step"] > 0 and r["teacher_seconds_per_step"] > 0 for r in result["runs"])
    assert set(result["summary"]) == {"system", "tcmalloc"}
