"""Kernels forked from a template process: real templates, real kernels, real nbclient."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from workbench.run import kernels, provisioner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template():
    """One template for the module (the process-wide one kernel_manager_class uses)."""
    tpl = kernels.start_template()
    tpl.wait_ready()
    yield tpl
    kernels.close_template()


def _notebook(*cells: str, kernel: str = "python3"):
    v4 = nbformat.v4
    spec = {"name": kernel, "language": "python", "display_name": kernel}
    return v4.new_notebook(
        cells=[v4.new_code_cell(c) for c in cells], metadata={"kernelspec": spec}
    )


def _execute(nb, cwd: Path, env: dict | None = None, km_class=None, timeout: float = 120):
    """Run ``nb`` in ``cwd``; its kernel's provisioner (nbclient drops its manager after)."""
    seen: list = []

    class Recording(km_class or kernels.kernel_manager_class(nb)):
        async def start_kernel(self, **kw):
            await super().start_kernel(**kw)
            seen.append(self.provisioner)

    client = NotebookClient(
        nb,
        timeout=timeout,
        startup_timeout=180,
        kernel_name=nb.metadata.kernelspec.name,
        kernel_manager_class=Recording,
        resources={"metadata": {"path": str(cwd)}},
    )
    try:
        client.execute(cwd=str(cwd), env=env if env is not None else dict(os.environ))
    finally:
        _execute.provisioner = seen[0] if seen else None
    return seen[0]


def _printed(nb) -> list:
    """The JSON each code cell printed (one line per cell)."""
    out = []
    for cell in nb.cells:
        text = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")
        out.append(json.loads(text) if text.strip() else None)
    return out


FACTS = (
    "import os, sys, json\n"
    "print(json.dumps({'ppid': os.getppid(), 'pid': os.getpid(), 'leader': os.getsid(0) == "
    "os.getpid(), 'cwd': os.getcwd(), 'preloaded': sorted(m for m in ('pandas', 'sklearn', "
    "'mlflow', 'matplotlib') if m in sys.modules)}))"
)


def _task_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _sockets(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.append(target)
    return found


# ------------------------------------------------------------------ reading import cells


def test_notebook_imports_are_the_top_level_imports_of_code_cells():
    nb = _notebook(
        "%matplotlib inline\nimport numpy as np, os.path\nfrom sklearn.ensemble import (\n"
        "    GradientBoostingClassifier,\n)\n!ls\n",
        "def f():\n    import json\nfrom . import sibling\nfrom pandas import *\n",
        "%%bash\necho import nothing\n",
        "this is not python(",
        "import mlflow.sklearn\nfrom sklearn.ensemble import RandomForestClassifier",
    )
    nb.cells.append(nbformat.v4.new_markdown_cell("import markdown_is_not_code"))
    assert kernels.notebook_imports(nb) == [
        ["numpy", []],
        ["os.path", []],
        ["sklearn.ensemble", ["GradientBoostingClassifier", "RandomForestClassifier"]],
        ["pandas", []],
        ["mlflow.sklearn", []],
    ]


def test_batch_imports_merge_what_the_batch_notebooks_import(tmp_path):
    one, two, broken = tmp_path / "one.ipynb", tmp_path / "two.ipynb", tmp_path / "broken.ipynb"
    nbformat.write(_notebook("import pandas\nfrom sklearn.base import clone"), str(one))
    nbformat.write(_notebook("from sklearn.base import BaseEstimator\nimport mlflow"), str(two))
    broken.write_text("{not json")
    assert kernels.batch_imports([one, two, one, broken]) == [
        ["pandas", []],
        ["sklearn.base", ["clone", "BaseEstimator"]],
        ["mlflow", []],
    ]


# ------------------------------------------------------------------ forked kernels


def test_a_forked_kernel_is_the_templates_child_with_everything_preloaded(template, tmp_path):
    nb = _notebook(FACTS)
    prov = _execute(nb, tmp_path)
    (facts,) = _printed(nb)
    assert type(prov).__name__ == "ForkProvisioner"
    assert facts["ppid"] == template.pid and facts["leader"]  # its own session, our child's
    assert facts["cwd"] == str(tmp_path)
    assert facts["preloaded"] == ["matplotlib", "mlflow", "pandas", "sklearn"]
    # the template itself: still one thread and no socket after it forked
    assert _task_count(template.pid) == 1
    assert _sockets(template.pid) == []


def test_jobs_do_not_see_each_others_state(template, tmp_path):
    """A module-level variable, an environment variable, a working directory and an open
    file set by one job are not seen by the next (nor the first job's random numbers)."""
    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "elsewhere"
    for d in (a, b, elsewhere):
        d.mkdir()
    held = tmp_path / "held.txt"
    first = _notebook(
        "import json, os, numpy as np, pandas\n"
        "pandas.WB_MARK = 'set by job 1'\n"
        "WB_GLOBAL = 1\n"
        "os.environ['WB_LEAK'] = 'from job 1'\n"
        f"os.chdir({str(elsewhere)!r})\n"
        f"held = open({str(held)!r}, 'w')\n"
        "print(json.dumps({'draw': np.random.rand()}))"
    )
    second = _notebook(
        "import json, os, numpy as np, pandas\n"
        "fds = [os.readlink(f'/proc/self/fd/{fd}') for fd in os.listdir('/proc/self/fd')\n"
        "       if os.path.exists(f'/proc/self/fd/{fd}')]\n"
        "print(json.dumps({'mark': hasattr(pandas, 'WB_MARK'), 'global': 'WB_GLOBAL' in "
        f"globals(), 'env': os.environ.get('WB_LEAK'), 'cwd': os.getcwd(), 'held': {str(held)!r} "
        "in fds, 'draw': np.random.rand()}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "WB_LEAK"}
    _execute(first, a, env)
    _execute(second, b, env)
    one, two = _printed(first)[0], _printed(second)[0]
    assert two == {
        "mark": False,
        "global": False,
        "env": None,
        "cwd": str(b),
        "held": False,
        "draw": two["draw"],
    }
    assert one["draw"] != two["draw"]  # numpy's global generator reseeded in each kernel


def test_the_job_gets_its_own_environment_and_blas_threads(template, tmp_path):
    env = {**os.environ, "WB_JOB": "mine"}
    env.pop("OPENBLAS_NUM_THREADS", None)
    nb = _notebook(
        "import json, os\nfrom threadpoolctl import threadpool_info\n"
        "blas = [p['num_threads'] for p in threadpool_info() if p['internal_api'] == 'openblas']\n"
        "print(json.dumps({'job': os.environ.get('WB_JOB'), 'blas': blas, "
        "'openblas_env': os.environ.get('OPENBLAS_NUM_THREADS'), "
        "'arrow_env': os.environ.get('JE_ARROW_MALLOC_CONF')}))"
    )
    _execute(nb, tmp_path, env)
    facts = _printed(nb)[0]
    cores = len(os.sched_getaffinity(0))
    assert facts["job"] == "mine"
    assert facts["openblas_env"] is None and facts["arrow_env"] is None  # the template's own
    assert facts["blas"] and set(facts["blas"]) == {cores}  # OpenBLAS's default, after the fork


def test_matplotlib_figures_show_inline(template, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    nb = _notebook("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    _execute(nb, tmp_path, env)
    assert any("image/png" in o.get("data", {}) for o in nb.cells[0].outputs)


def test_a_forked_kernel_exits_as_python_does(template, tmp_path):
    """Its quick exit still joins threads, runs atexit handlers and flushes open files."""
    nb = _notebook(
        "import atexit, threading, time\n"
        f"atexit.register(lambda: open({str(tmp_path / 'atexit.txt')!r}, 'w').write('ran'))\n"
        "def late():\n"
        "    time.sleep(1)\n"
        f"    open({str(tmp_path / 'thread.txt')!r}, 'w').write('joined')\n"
        "threading.Thread(target=late).start()\n"
        f"unclosed = open({str(tmp_path / 'unclosed.txt')!r}, 'w')\n"
        "unclosed.write('flushed')"
    )
    assert type(_execute(nb, tmp_path)).__name__ == "ForkProvisioner"
    for name, text in (("atexit", "ran"), ("thread", "joined"), ("unclosed", "flushed")):
        assert (tmp_path / f"{name}.txt").read_text() == text


def test_a_batch_template_imports_what_its_notebooks_need_and_nothing_else(tmp_path):
    """A batch's template (told its notebooks' imports) preloads those and what they load at
    their first call (MLflow's SQL store), and none of the usual heavy modules no job uses."""
    probe = (
        "import json, sys\nprint(json.dumps(sorted(m for m in ('pandas', 'sklearn', "
        "'matplotlib', 'mlflow', 'mlflow.store.tracking.sqlalchemy_store', 'json') "
        "if m in sys.modules)))"
    )
    light = kernels.Template([], usual=False)
    heavy = kernels.Template([["mlflow", []]], usual=False)
    try:
        for tpl in (light, heavy):
            tpl.wait_ready()
        nb_light, nb_heavy = _notebook(probe), _notebook(probe)
        _execute(nb_light, tmp_path, km_class=provisioner.forked_kernel_manager(light))
        _execute(nb_heavy, tmp_path, km_class=provisioner.forked_kernel_manager(heavy))
    finally:
        light.close()
        heavy.close()
    assert _printed(nb_light) == [["json"]]  # the kernel's own modules only
    assert "mlflow.store.tracking.sqlalchemy_store" in _printed(nb_heavy)[0]
    assert "sklearn" not in _printed(nb_heavy)[0]


def test_forked_kernels_shut_down_by_themselves(template, tmp_path):
    """Every kernel exits on its own when asked (exit code 0), none killed by jupyter_client's
    shutdown timeout: ipykernel 7 could hang in its own shutdown (control thread flushing
    through a stopped IOPub thread), one kernel in five here, until SIGTERM came 2.5 s later."""
    codes: list = []

    class Recording(kernels.kernel_manager_class()):
        async def start_kernel(self, **kw):
            await super().start_kernel(**kw)
            prov, wait = self.provisioner, self.provisioner.wait

            async def recorded_wait():
                code = await wait()
                codes.append(code)
                return code

            prov.wait = recorded_wait

    for i in range(16):
        _execute(_notebook(f"print({i})"), tmp_path, km_class=Recording)
    assert codes == [0] * 16


# ------------------------------------------------------------------ truthful endings


def test_cell_error_timeout_and_killed_kernel_end_as_with_a_fresh_kernel(template, tmp_path):
    with pytest.raises(CellExecutionError, match="boom"):
        _execute(_notebook("raise ValueError('boom')"), tmp_path)
    with pytest.raises(CellTimeoutError):
        _execute(_notebook("import time\ntime.sleep(60)"), tmp_path, timeout=3)
    with pytest.raises(DeadKernelError):
        _execute(_notebook("import os\nos.kill(os.getpid(), 9)"), tmp_path)
    assert type(_execute.provisioner).__name__ == "ForkProvisioner"


def test_poll_wait_signal_kill_and_terminate_reach_the_templates_child(template, tmp_path):
    async def scenario() -> dict:
        km = kernels.kernel_manager_class()(kernel_name="python3")
        await km.start_kernel(cwd=str(tmp_path), env=dict(os.environ))
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=180)
        prov = km.provisioner
        pid = prov.forked
        running = await prov.poll()
        # interrupt (SIGINT to the kernel's group) stops a sleeping cell
        msg_id = kc.execute("import time\ntime.sleep(60)")
        await asyncio.sleep(1.0)
        await km.interrupt_kernel()
        reply = await kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = await kc.get_shell_msg(timeout=30)
        await prov.kill()
        code = await asyncio.wait_for(prov.wait(), timeout=30)
        kc.stop_channels()
        gone = not os.path.exists(f"/proc/{pid}")
        await km.cleanup_resources()

        km2 = kernels.kernel_manager_class()(kernel_name="python3")
        await km2.start_kernel(cwd=str(tmp_path), env=dict(os.environ))
        await km2.provisioner.terminate()
        code2 = await asyncio.wait_for(km2.provisioner.wait(), timeout=30)
        await km2.cleanup_resources()
        return {
            "running": running,
            "ename": reply["content"].get("ename"),
            "code": code,
            "gone": gone,
            "has_process": prov.has_process,
            "code2": code2,
        }

    got = asyncio.run(scenario())
    assert got == {
        "running": None,
        "ename": "KeyboardInterrupt",
        "code": -signal.SIGKILL,
        "gone": True,
        "has_process": False,
        "code2": -signal.SIGTERM,
    }


# ------------------------------------------------------------------ falling back


def test_another_kernelspec_starts_a_fresh_kernel(template, tmp_path, monkeypatch):
    spec_dir = tmp_path / "share" / "kernels" / "wbother"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "another python",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    nb = _notebook(FACTS, kernel="wbother")
    prov = _execute(nb, tmp_path)
    (facts,) = _printed(nb)
    assert type(prov).__name__ == "LocalProvisioner"
    assert facts["ppid"] == os.getpid()  # launched by us, not forked by the template
    assert "pandas" not in facts["preloaded"]


def test_a_module_beside_the_notebook_that_shadows_a_preloaded_one(template, tmp_path, caplog):
    (tmp_path / "pandas.py").write_text("LOCAL = True\n")
    nb = _notebook(
        "import json, os, pandas\nprint(json.dumps({'local': getattr(pandas, 'LOCAL', False), "
        "'ppid': os.getppid()}))"
    )
    with caplog.at_level(logging.WARNING, logger="workbench.run.kernels"):
        _execute(nb, tmp_path)
    facts = _printed(nb)[0]
    assert facts == {"local": True, "ppid": os.getpid()}  # a fresh kernel, which sees it
    assert "shadow preloaded ones" in caplog.text and "pandas" in caplog.text


def _module_dir(tmp_path: Path) -> Path:
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "wb_threaded.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    )
    (mods / "wb_socket.py").write_text("import socket\nheld = socket.socket()\n")
    return mods


@pytest.mark.parametrize(
    ("module", "why"), [("wb_threaded", "threads"), ("wb_socket", "open descriptors")]
)
def test_an_import_that_starts_a_thread_or_opens_a_socket(
    tmp_path, monkeypatch, caplog, module, why
):
    """The template imports the notebook's modules; if one starts a thread or opens a socket
    the template refuses to fork and the job gets a fresh kernel (logged)."""
    monkeypatch.setenv("PYTHONPATH", str(_module_dir(tmp_path)))
    tpl = kernels.Template()
    try:
        nb = _notebook(f"import {module}\n" + FACTS)
        tpl.preload(kernels.notebook_imports(nb))
        with caplog.at_level(logging.WARNING, logger="workbench.run.kernels"):
            _execute(nb, tmp_path, km_class=provisioner.forked_kernel_manager(tpl))
        facts = _printed(nb)
        assert facts[0]["ppid"] == os.getpid()
        assert why in caplog.text
    finally:
        tpl.close()


def test_a_dead_template_takes_its_kernels_and_later_jobs_start_fresh(tmp_path):
    tpl = kernels.Template()
    km_class = provisioner.forked_kernel_manager(tpl)

    async def scenario() -> tuple:
        km = km_class(kernel_name="python3")
        await km.start_kernel(cwd=str(tmp_path), env=dict(os.environ))
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=180)  # its parent watch is running
        kc.stop_channels()
        prov = km.provisioner
        pid = prov.forked
        os.kill(tpl.pid, signal.SIGKILL)
        t0 = time.monotonic()
        while await prov.poll() is None and time.monotonic() - t0 < 30:
            await asyncio.sleep(0.1)
        ended = await prov.poll()
        await km.cleanup_resources()
        return pid, ended

    try:
        pid, ended = asyncio.run(scenario())
        assert pid and ended is not None  # the kernel saw its parent die and exited
        nb = _notebook(FACTS)
        _execute(nb, tmp_path, km_class=km_class)
        facts = _printed(nb)[0]
        assert facts["ppid"] == os.getpid()
    finally:
        tpl.close()


OWNER = """
import asyncio, os, sys, time
from workbench.run import kernels, provisioner

async def main():
    template = kernels.Template()
    km = provisioner.forked_kernel_manager(template)(kernel_name="python3")
    await km.start_kernel(cwd=os.getcwd(), env=dict(os.environ))
    print(template.pid, km.provisioner.forked, flush=True)
    time.sleep(600)

asyncio.run(main())
"""


def test_an_owner_killed_outright_takes_its_template_and_kernels(tmp_path):
    """As the engine's kernels die with a worker killed outright, so do forked ones."""
    import subprocess

    from workbench.core import processes

    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        template_pid, kernel_pid = map(int, owner.stdout.readline().split())
        assert processes.alive(template_pid) and processes.alive(kernel_pid)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            processes.alive(template_pid) or processes.alive(kernel_pid)
        ):
            time.sleep(0.05)
        assert not processes.alive(template_pid) and not processes.alive(kernel_pid)
    finally:
        owner.kill()
        owner.wait()


def _sharer(owner, index: int, conn) -> None:
    """A batch worker's part: fork a kernel from the shared template through channel
    ``index``, say its pid, and shut it down when told (saying its exit code)."""
    template = kernels.Template.attach_shared(owner, index)

    async def main() -> None:
        km = provisioner.forked_kernel_manager(template)(kernel_name="python3")
        await km.start_kernel(cwd=os.getcwd(), env=dict(os.environ))
        conn.send(km.provisioner.forked)
        conn.recv()
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=120)
        kc.stop_channels()
        codes = []
        wait = km.provisioner.wait

        async def recorded() -> int | None:
            codes.append(await wait())
            return codes[-1]

        km.provisioner.wait = recorded
        await km.shutdown_kernel(now=False)
        conn.send(codes)

    asyncio.run(main())


def test_workers_share_one_template_and_a_dead_worker_takes_only_its_kernels(tmp_path):
    """Two workers fork their kernels from one template, each through its own channel;
    one killed outright takes its kernel along, the other keeps its kernel and channel."""
    import multiprocessing

    import psutil

    ctx = multiprocessing.get_context("fork")
    owner = kernels.Template([], usual=False, channels=2)
    procs, conns = [], []
    try:
        for i in range(2):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_sharer, args=(owner, i, theirs))
            proc.start()
            owner.hand_over(i)
            procs.append(proc)
            conns.append(ours)
        pids = [c.recv() for c in conns]
        kernel = [psutil.Process(pid) for pid in pids]
        assert [k.ppid() for k in kernel] == [owner.pid, owner.pid]
        procs[0].kill()
        procs[0].join()
        _, alive = psutil.wait_procs([kernel[0]], timeout=15)
        assert alive == [], "the dead worker's kernel outlived it"
        assert kernel[1].is_running()
        conns[1].send("shut down")
        assert conns[1].recv() == [0]  # its exit, reported through its own channel
        procs[1].join(timeout=30)
    finally:
        for proc in procs:
            proc.kill()
        owner.close()
    assert not psutil.pid_exists(owner.pid) or psutil.Process(owner.pid).status() == "zombie"


# ------------------------------------------------------------------ through `workbench batch`


def test_a_batch_runs_on_forked_kernels_and_ends_truthfully(project, run_cli, experiment_name):
    """``workbench batch --jobs 2``: the workers fork their kernels from templates, and a
    cell error, a timeout and a killed kernel end as they do with fresh kernels."""
    from runner_helpers import NOTEBOOKS, runs_of

    from workbench.core import names

    probe = project / "probe.ipynb"
    nb = _notebook(
        "experiment_name: str = 'probe'  # experiment",
        "import os, sys\nprint('PRELOADED', 'pandas' in sys.modules)\n"
        "print('PARENT', open(f'/proc/{os.getppid()}/cmdline').read().replace(chr(0), ' '))",
    )
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, str(probe))
    docs = [f"notebook: {probe}", f"notebook: {NOTEBOOKS / 'raises.ipynb'}"]
    docs += [f"notebook: {NOTEBOOKS / 'sleeps.ipynb'}\ntimeout: 20"]
    docs += [f"notebook: {NOTEBOOKS / 'killself.ipynb'}", f"notebook: {probe}\nlabel: again"]
    batch = project / "faults.yaml"
    batch.write_text("\n---\n".join(f"{d}\nexperiment: {experiment_name}" for d in docs) + "\n")
    res = run_cli("batch", str(batch), "--jobs", "2")
    assert res.returncode == 1, res.stdout + res.stderr
    got = {}
    for run in runs_of(experiment_name):
        report = nbformat.read(project / run.data.tags[names.TAG_REPORT], as_version=4)
        name = f"{Path(run.data.tags['mlflow.source.name']).stem}-{run.data.tags[names.TAG_LABEL]}"
        got[name] = (run.info.status, run.data.tags.get(names.TAG_REASON, ""), report)
    assert sorted(got) == [
        "killself-default",
        "probe-again",
        "probe-default",
        "raises-default",
        "sleeps-default",
    ]
    for name in ("probe-default", "probe-again"):
        status, _, report = got[name]
        assert status == "FINISHED"
        text = str(report.cells)
        assert "PRELOADED True" in text and "workbench.run.template ipykernel_launcher" in text
    status, why, _ = got["raises-default"]
    assert status == "FAILED" and "ValueError: boom on purpose" in why
    status, why, _ = got["sleeps-default"]
    assert status == "FAILED" and "longer than the timeout of 20 s" in why
    status, why, _ = got["killself-default"]
    assert status == "KILLED" and "the kernel died" in why
