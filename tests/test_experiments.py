"""experiments/: cost_robustness.py (each run's cost from the bench mode its config names),
evidence_report.py (the evidence page from committed runs) and paper_defaults.py (first steps)."""

import importlib.util
import json
import os
import shutil
import subprocess
from unittest import mock

import pytest
import torch


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(os.path.dirname(__file__), "..", "experiments", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cost_robustness = load_script("cost_robustness")
evidence_report = load_script("evidence_report")
paper_defaults = load_script("paper_defaults")


@pytest.mark.parametrize(
    "options, described",
    [
        ({"every": 16, "h": 0.1}, "edlcm seed 3"),  # the current defaults
        ({"h": 0.03}, "edlcm seed 3, every=1, h=0.03"),  # written before `every` existed: every step
        ({"every": 4}, "edlcm seed 3, every=4"),
    ],
)
def test_a_run_is_described_by_what_it_set_away_from_the_defaults(options, described):
    config = {"method": "edlcm", "seed": 3, "method_options": options}
    assert evidence_report.summarize_runs.describe(config) == described
    assert evidence_report.summarize_runs.describe({"method": "at", "seed": 0, "method_options": {}}) == "at seed 0"


@pytest.mark.parametrize(
    "config, mode",
    [
        ({"method": "base"}, "plain"),
        ({"method": "edlcm", "channels_last": True}, "fused_cl"),
        ({"method": "edlcm", "method_options": {"every": 4, "alpha": 10.0}}, "every4"),
        ({"method": "edlcm", "method_options": {"every": 16}, "channels_last": True}, "every16_cl"),
        (
            {"method": "edlcm", "method_options": {"every": 16, "max_pull": 1.0}, "channels_last": True},
            "every16_bounded_cl",
        ),
        ({"method": "gal", "method_options": {"beta": 0.5}}, "gal"),
        (
            {"method": "edlcm", "method_options": {"max_ratio": None, "max_pull": 0.1}, "channels_last": True},
            "bounded_cl",
        ),
        ({"method": "edlcm", "method_options": {"max_pull": None}}, "fused"),
        ({"method": "at", "method_options": {"steps": 1, "eps": 0.01}, "channels_last": True}, "at_cl"),
        ({"method": "at", "method_options": {"steps": 4, "eps": 0.01}, "channels_last": True}, "at_pgd4_cl"),
        ({"method": "trs", "channels_last": True}, "trs_cl"),
    ],
)
def test_bench_mode_of_a_run(config, mode):
    assert cost_robustness.bench_mode(config) == mode


def test_runs_without_a_bench_mode_are_refused():
    with pytest.raises(ValueError, match="every=1 only"):
        cost_robustness.bench_mode({"method": "pdd", "method_options": {"every": 4}})
    with pytest.raises(ValueError, match="combines every and max_pull at every=16 only"):
        cost_robustness.bench_mode({"method": "edlcm", "method_options": {"every": 4, "max_pull": 0.1}})


def test_table_and_figure_from_eval_and_bench_reports(tmp_path):
    configs = {
        "base": {"method": "base", "channels_last": True},
        "edlcm_every4": {"method": "edlcm", "method_options": {"every": 4}, "channels_last": True},
    }
    results = {}
    for index, (name, config) in enumerate(configs.items()):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        worst = {"0.01": {"all": 0.2 + 0.3 * index}, "0.03": {"all": 0.05 * index}}
        results[name] = {
            "checkpoint": str(tmp_path / name / "checkpoint.pt"),
            "clean": 0.8 - 0.1 * index,
            "worst": worst,
        }
    (tmp_path / "results.json").write_text(json.dumps({"results": results}))
    bench = {
        "results": [
            {"config": {"name": "resnet18"}, "step_seconds": {"plain_cl": 9.0, "every4_cl": 9.0}},
            {"config": {"name": "small_cnn"}, "step_seconds": {"plain_cl": 0.08, "every4_cl": 0.16, "fused": 0.5}},
        ]
    }
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    cost_robustness.main([str(tmp_path / "results.json"), str(tmp_path / "bench.json"), str(tmp_path / "out")])
    table = (tmp_path / "out" / "cost_robustness.md").read_text().splitlines()
    assert table[2] == "| base | 1.00 | 80.0 | 20.0 | 0.0 |"
    assert table[3] == "| edlcm_every4 | 2.00 | 70.0 | 50.0 | 5.0 |"
    assert (tmp_path / "out" / "cost_robustness.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit):  # an eps that was not evaluated
        cost_robustness.main(
            [str(tmp_path / "results.json"), str(tmp_path / "bench.json"), str(tmp_path / "out"), "--eps", "0.02"]
        )
    del bench["results"][1]["step_seconds"]["every4_cl"]
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    with pytest.raises(ValueError, match=r"no mode \['every4_cl'\]"):
        cost_robustness.main([str(tmp_path / "results.json"), str(tmp_path / "bench.json"), str(tmp_path / "out")])


def test_paper_defaults_reports_a_dominance_warning_and_the_cap():
    """An uncapped, absurd alpha is reported as dominating; the default cap lowers alpha instead."""
    torch.manual_seed(0)
    batches = [(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]
    with mock.patch.dict(
        paper_defaults.SETTINGS,
        {"absurd": {"max_ratio": None, "max_pull": None, "alpha": 1e6}, "capped": {"alpha": 1e6}},
    ):
        assert paper_defaults.run("small_cnn", "absurd", batches)["dominance_warning"]
        capped = paper_defaults.run("small_cnn", "capped", batches)
    assert not capped["dominance_warning"] and capped["min_alpha_applied"] < 1e6


def test_paper_defaults_reports_the_ratio_at_the_first_regularized_step_and_windows_of_ce():
    torch.manual_seed(0)
    batches = [(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(5)]
    report = paper_defaults.run("small_cnn", "default", batches, window=2)
    assert report["first_ratio"] > 0 and report["min_alpha_applied"] <= 1.0 and not report["dominance_warning"]
    assert report["steps"] == 5 and len(report["windows"]) == 2  # the 5th step fills no window
    base = paper_defaults.run("small_cnn", "base", batches, window=1)
    # the default's uncapped pull is probed before the step: at step 0 every setting has the same weights
    assert sorted(base["probes"]) == [0, 4] and report["probes"][0] == pytest.approx(base["probes"][0], rel=1e-12)
    assert base["probes"][0][0] == pytest.approx(
        paper_defaults.run("small_cnn", "default", batches)["first_ratio"],
        rel=1e-6,  # float32 divided in float64
    )
    assert base["probes"][4][1] > 0
    ces = base["windows"]
    assert paper_defaults.run("small_cnn", "base", batches, window=2)["windows"] == pytest.approx(
        [(ces[0] + ces[1]) / 2, (ces[2] + ces[3]) / 2]
    )


PERSISTENT_RUN = os.path.join(os.path.dirname(__file__), "..", "experiments", "persistent_run.sh")


def persistent_run_env(tmp_path, stub_body: str, **variables) -> dict:
    """The environment of persistent_run.sh with a stand-in for edlcm: a bash script that knows its
    --out-dir as $out and runs ``stub_body``."""
    stub = tmp_path / "edlcm_stub.sh"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'out=""; prev=""; for a in "$@"; do [ "$prev" = --out-dir ] && out=$a; prev=$a; done\n' + stub_body
    )
    stub.chmod(0o755)
    return {**os.environ, "EDLCM": str(stub), "DATA": str(tmp_path), **variables}


def test_persistent_run_trains_one_epoch_per_call_and_resumes_where_it_stopped(tmp_path):
    """experiments/persistent_run.sh with a stand-in for edlcm: one train call per missing epoch, each
    with --stop-after and --resume, then the eval call; a rerun trains nothing more, evaluates again
    only while no results.json was written (an interrupted evaluation) or more attacks are asked for,
    and then does nothing."""
    calls = tmp_path / "calls.txt"
    env = persistent_run_env(
        tmp_path,
        f'echo "$@" >> {calls}\n'
        '[ "$1" = train ] && echo "{}" >> "$out/log.jsonl"\n'
        '[ "$1" = eval ] && [ ! -f "$out/../interrupt" ] && echo "{}" > "$out/results.json"\n'
        "exit 0\n",
        RESULTS=str(tmp_path / "results"),
        EPOCHS="3",
        COMMIT="0",
    )
    (tmp_path / "results" / "runs" / "r").mkdir(parents=True)
    (tmp_path / "results" / "runs" / "r" / "interrupt").touch()  # the first evaluation writes no results
    for _ in range(3):
        subprocess.run(
            ["bash", PERSISTENT_RUN, "r", "edlcm", "0", "alpha=2.0"], check=True, env=env, capture_output=True
        )
        (tmp_path / "results" / "runs" / "r" / "interrupt").unlink(missing_ok=True)
    lines = calls.read_text().splitlines()
    trains = [line for line in lines if line.startswith("train")]
    assert [line.split("--stop-after ")[1].split()[0] for line in trains] == ["1", "2", "3"]
    assert all("--resume" in line and "--set alpha=2.0" in line and "--epochs 3" in line for line in trains)
    assert sum(line.startswith("eval") for line in lines) == 2
    # asked for one attack more (the AutoAttack row): evaluated once more, with it; then left alone
    for _ in range(2):
        env["ATTACKS"] = "default,autoattack"
        subprocess.run(
            ["bash", PERSISTENT_RUN, "r", "edlcm", "0", "alpha=2.0"], check=True, env=env, capture_output=True
        )
    evals = [line for line in calls.read_text().splitlines() if line.startswith("eval")]
    assert len(evals) == 3 and "--attacks default " in evals[1] and "--attacks default,autoattack " in evals[2]


def test_persistent_run_commits_the_flags_of_a_long_evaluation_while_it_runs(tmp_path):
    """An evaluation that runs for hours (AutoAttack) commits its cached per-sample flags as it goes
    (every FLAG_COMMIT_SECONDS), so a machine lost mid-evaluation keeps what was attacked; the script
    still returns as soon as the evaluation does."""
    repo = tmp_path / "repo"
    run_dir = repo / "results" / "runs" / "r"
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "log.jsonl").write_text("{}\n")  # trained: only the evaluation is left
    git = ["git", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for key, value in (("user.name", "t"), ("user.email", "t@t")):  # the script commits here too
        subprocess.run([*git, "config", key, value], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], check=True)
    env = persistent_run_env(  # one attack's flags at once, the results after three commit periods
        tmp_path,
        'mkdir -p "$out/flags" && echo 1 > "$out/flags/white_fgsm_0.01.pt"\nsleep 3; echo "{}" > "$out/results.json"\n',
        REPO=str(repo),
        RESULTS="results",  # relative to REPO wherever it is run from (as from a pinned lane)
        EPOCHS="1",
        FLAG_COMMIT_SECONDS="1",
    )
    subprocess.run(
        ["bash", PERSISTENT_RUN, "r", "edlcm", "0"], check=True, env=env, capture_output=True, timeout=60, cwd=tmp_path
    )
    log = subprocess.run([*git, "log", "--format=%s", "--name-only"], check=True, capture_output=True, text=True)
    commits = log.stdout.split("Record: ")[1:]
    in_progress = [c for c in commits if c.startswith("r evaluation in progress")]
    assert in_progress and all("results.json" not in c for c in in_progress)
    assert any("eval/flags/white_fgsm_0.01.pt" in c for c in in_progress)
    assert commits[0].startswith("r evaluated") and "results.json" in commits[0]


def test_pinned_lane_runs_the_script_as_committed_from_a_worktree_and_records_into_the_checkout(tmp_path):
    """experiments/pinned_lane.sh: the experiment runs from a worktree at COMMIT (the script as
    committed there, not as edited since), with REPO naming the checkout its records go to."""
    repo = tmp_path / "repo"
    (repo / "experiments").mkdir(parents=True)
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "experiments", "pinned_lane.sh"), repo / "experiments")
    job = repo / "experiments" / "job.sh"
    job.write_text('echo "committed $(pwd)" > "$REPO/ran.txt"\n')
    git = ["git", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for key, value in (("user.name", "t"), ("user.email", "t@t")):
        subprocess.run([*git, "config", key, value], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "pin"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True)
    job.write_text('echo "edited" > "$REPO/ran.txt"\n')  # an edit after the pin changes nothing in flight
    lanes = tmp_path / "lanes"
    env = {**os.environ, "LANES": str(lanes)}
    script = str(repo / "experiments" / "pinned_lane.sh")
    subprocess.run(["bash", script, "HEAD", "experiments/job.sh"], check=True, env=env, capture_output=True)
    assert (repo / "ran.txt").read_text().split() == ["committed", str(lanes / commit.stdout.strip())]
    failed = subprocess.run(["bash", script, "HEAD"], env=env, capture_output=True, text=True)
    assert failed.returncode == 2 and "usage" in failed.stderr
    # A shell where `python` has no torch (the environment not activated) stops before any run starts.
    no_torch = tmp_path / "no_torch"
    no_torch.mkdir()
    (no_torch / "python").write_text("#!/bin/sh\nexit 1\n")
    (no_torch / "python").chmod(0o755)
    (repo / "ran.txt").unlink()
    env["PATH"] = f"{no_torch}{os.pathsep}{env['PATH']}"
    failed = subprocess.run(["bash", script, "HEAD", "experiments/job.sh"], env=env, capture_output=True, text=True)
    assert failed.returncode == 2 and "cannot import torch" in failed.stderr
    assert not (repo / "ran.txt").exists()


def write_run(
    folder, method: str, epochs_done: int, clean: float, pgd: dict | None, samples: int = 1000, seconds: float = 0
):
    """A run's committed state as persistent_run.sh leaves it: config, log (each epoch taking ``seconds``, if
    given) and (if pgd) eval results."""
    folder.mkdir(parents=True)
    config = {"method": method, "seed": 0, "epochs": 2, "channels_last": True, "method_options": {}}
    (folder / "config.json").write_text(json.dumps(config))
    epoch = {"test_accuracy": clean} | ({"seconds": seconds} if seconds else {})
    (folder / "log.jsonl").write_text("".join(json.dumps(epoch) + "\n" for _ in range(epochs_done)))
    if pgd is not None:
        by_eps = {eps: {"all": value} for eps, value in pgd.items()}
        result = {"samples": samples, "clean": clean, "attacks": {"pgd": by_eps}, "worst": by_eps}
        (folder / "eval").mkdir()
        (folder / "eval" / "results.json").write_text(json.dumps({"results": {folder.name: result}}))


def test_evidence_report_sets_ours_beside_the_papers_table_ii_and_lists_unfinished_runs(tmp_path):
    runs = tmp_path / "results" / "runs"
    # EDLCM beats every other method under PGD at 0.005 but DEG beats it at 0.01 (rank 2); pdd is one
    # epoch short, so it is not compared and no rank can be given; gal was never started.
    pgd = {"base": (0.30, 0.10), "deg": (0.20, 0.50), "adp": (0.35, 0.12), "edlcm": (0.40, 0.20)}
    for name, (low, high) in pgd.items():
        write_run(runs / name, name, 2, 0.5, {"0.005": low, "0.01": high})
    edlcm_results = runs / "edlcm" / "eval" / "results.json"  # only EDLCM has the AutoAttack row
    report = json.loads(edlcm_results.read_text())
    report["results"]["edlcm"]["attacks"]["autoattack"] = {"0.01": {"all": 0.18}}
    edlcm_results.write_text(json.dumps(report))
    write_run(runs / "pdd", "pdd", 1, 0.5, None, seconds=90)
    runs_file = tmp_path / "planned.runs"
    runs_file.write_text("# comment\nbase base 0\nedlcm edlcm 0\ndeg deg 0\nadp adp 0\npdd pdd 0\ngal gal 0 lam=1\n")
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text(f"# Results\nhand-written\n{evidence_report.BEGIN}\nstale\n{evidence_report.END}\nafter\n")
    bench = {"results": [{"config": {"name": "small_cnn"}, "step_seconds": {"plain_cl": 0.1, "fused_cl": 0.5}}]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    arguments = ["--results", str(tmp_path / "results"), "--runs-file", str(runs_file), "--page", str(page)]
    arguments += ["--bench", str(tmp_path / "bench.json"), "--eps", "0.005,0.01", "--headline", "0.01"]
    with pytest.raises(ValueError, match="the bench report has no mode"):  # deg and adp have no bench mode here
        evidence_report.main(arguments)
    bench["results"][0]["step_seconds"].update(deg_cl=0.2, adp_cl=0.3)
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    evidence_report.main(arguments)
    text = page.read_text()
    assert text.startswith("# Results\nhand-written\n") and text.endswith(f"{evidence_report.END}\nafter\n")
    assert "stale" not in text
    table = (tmp_path / "results" / "table_ii.md").read_text().splitlines()
    # ours (paper) per method, in the paper's order base, deg, adp, pdd, edlcm; EDLCM's rank: ours (paper)
    assert (
        "| PGD-10 (paper's, weak) | 0.005 | 30.0 (70.6) | 20.0 (36.7) | 35.0 (77.4) | - (80.1) | 40.0 (91.6) | - (1) |"
        in table
    )
    assert table[0].startswith("| Attack | eps | base: ours (paper)")
    # the training cost as logged (minutes per epoch; none logged: "-") and, for an evaluated run, its step
    # over Base's from the bench report; per attack at the headline eps, AutoAttack's where a run has it
    every_run = (tmp_path / "results" / "table.md").read_text()
    assert "| pdd | pdd seed 0 | 1/2 | 1.5 | - | 50.0 | not evaluated |" in every_run
    assert (
        "| edlcm | edlcm seed 0, every=1 | 2/2 | - | 5.00 | 50.0 (+0.0) | 50.0 | 40.0 (+10.0) | 20.0 (+10.0) | - | - | - | 18.0 |"
        in every_run
    )
    assert "| base | base seed 0 | 2/2 | - | 1.00 | 50.0 | 50.0 | 30.0 | 10.0 | - | - | - | - |" in every_run
    shutil.rmtree(runs / "pdd")  # pdd finishes: now every row has a rank
    write_run(runs / "pdd", "pdd", 2, 0.5, {"0.005": 0.25, "0.01": 0.15})
    bench["results"][0]["step_seconds"]["pdd_cl"] = 0.15
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    evidence_report.main(arguments)
    table = (tmp_path / "results" / "table_ii.md").read_text().splitlines()
    assert (
        "| PGD-10 (paper's, weak) | 0.005 | 30.0 (70.6) | 20.0 (36.7) | 35.0 (77.4) | 25.0 (80.1) | 40.0 (91.6) | 1 (1) |"
        in table
    )
    assert (
        "| PGD-10 (paper's, weak) | 0.01 | 10.0 (36.2) | 50.0 (6.8) | 12.0 (59.1) | 15.0 (60.1) | 20.0 (79.3) | 2 (1) |"
        in table
    )
    text = page.read_text()
    assert "Finished and evaluated: 5 of 6 planned runs" in text and "Not finished, so not compared: gal." in text
    assert "in 1 of the 2 attacked rows the paper also reports (the paper: 2 of 2)" in text
    assert "worst case at eps 0.01 20.0% against 10.0% (+10.0)" in text
    assert "| gal | not started | - | - | - | - | not evaluated |" in (tmp_path / "results" / "table.md").read_text()
    assert "| edlcm | 5.00 | 50.0 | 40.0 | 20.0 |" in (tmp_path / "results" / "cost_robustness.md").read_text()
    page.write_text("# no markers\n")
    with pytest.raises(ValueError, match="--page .* needs one"):
        evidence_report.main(arguments)


def test_paper_defaults_pull_bound_is_the_plain_step_when_loose_and_reported_when_tight():
    torch.manual_seed(0)
    batches = [(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(3)]
    bounds = {"loose": {"max_ratio": None, "max_pull": 1e9}, "tight": {"max_ratio": None, "max_pull": 1e-3}}
    with mock.patch.dict(paper_defaults.SETTINGS, bounds):
        loose = paper_defaults.run("small_cnn", "loose", batches, window=1)
        tight = paper_defaults.run("small_cnn", "tight", batches, window=1)
    assert loose["windows"] == pytest.approx(
        paper_defaults.run("small_cnn", "uncapped", batches, window=1)["windows"], rel=1e-5
    )
    assert loose["min_alpha_applied"] == 1.0 and tight["min_alpha_applied"] < 0.1


def test_cifar10_full_runs_what_runs_names_in_that_order_and_refuses_an_unknown_name(tmp_path):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "experiments", "cifar10_full.sh"), experiments)
    (experiments / "cifar10_full.runs").write_text("# comment\nfirst base 0\nsecond edlcm 0 every=4\nthird at 0\n")
    (experiments / "persistent_run.sh").write_text('echo "$@" >> "$(dirname "$0")/ran.txt"\n')
    script = str(experiments / "cifar10_full.sh")
    subprocess.run(["bash", script], check=True, capture_output=True)
    assert (experiments / "ran.txt").read_text().splitlines() == [
        "first base 0",
        "second edlcm 0 every=4",
        "third at 0",
    ]
    (experiments / "ran.txt").unlink()
    subprocess.run(["bash", script], check=True, capture_output=True, env={**os.environ, "RUNS": "third first"})
    assert (experiments / "ran.txt").read_text().splitlines() == ["third at 0", "first base 0"]
    failed = subprocess.run(
        ["bash", script], capture_output=True, text=True, env={**os.environ, "RUNS": "first fourth"}
    )
    assert failed.returncode == 2 and "RUNS: no run named fourth" in failed.stderr
    assert (experiments / "ran.txt").read_text().splitlines() == ["third at 0", "first base 0"]  # nothing ran


def test_gpu_paper_setting_resumes_a_cut_training_on_the_next_call_and_evaluates_once_all_finished(tmp_path):
    """experiments/gpu_paper_setting.sh with `python3 -m edlcm_ext` stood in for: each train call
    finishes one epoch and is then cut off (as by its time box) until --epochs are done. The first
    call leaves both methods at 1 of 2 epochs and exits 3; the same command again resumes both from
    their checkpoints (the epoch count kept in STATE) and evaluates the two finished ensembles."""
    calls, bin_dir = tmp_path / "calls.txt", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(
        "#!/usr/bin/env bash\n"
        f'[ "$1 $2" = "-m edlcm_ext" ] || exec "{shutil.which("python3")}" "$@"\n'
        f'echo "${{*:3}}" >> {calls}\n'
        'out=""; epochs=""; prev=""\n'
        'for a in "$@"; do [ "$prev" = --out-dir ] && out=$a; [ "$prev" = --epochs ] && epochs=$a; prev=$a; done\n'
        '[ "$3" = eval ] && exit 0\n'
        'mkdir -p "$out"; touch "$out/checkpoint.pt"\n'
        """echo '{"seconds": 1.0, "test_seconds": 0.5}' >> "$out/log.jsonl"\n"""
        '[ "$(wc -l < "$out/log.jsonl")" -ge "$epochs" ] || exit 124\n'
    )
    (bin_dir / "python3").chmod(0o755)
    script = os.path.join(os.path.dirname(__file__), "..", "experiments", "gpu_paper_setting.sh")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        **{"SKIP_BUILD": "1", "DATA": str(tmp_path), "EPOCHS": "2", "EVAL_SECONDS": "10", "BUDGET": "300"},
        **{"STATE": str(tmp_path / "state"), "OUT": str(tmp_path / "out"), "WORKERS": "0"},
    }
    first = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert first.returncode == 3, first.stdout + first.stderr
    del env["EPOCHS"]  # the rerun continues the schedule STATE keeps
    second = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    trains = [line for line in calls.read_text().splitlines() if line.startswith("train")]
    assert [("--method base" in line, "--resume" in line) for line in trains] == [
        (True, False),
        (False, False),
        (True, True),
        (False, True),
    ]
    assert all("--epochs 2" in line for line in trains)
    (evaluation,) = [line for line in calls.read_text().splitlines() if line.startswith("eval")]
    state = tmp_path / "state"
    assert f"--checkpoint {state}/base/checkpoint.pt --name base" in evaluation
    assert f"--checkpoint {state}/edlcm/checkpoint.pt --name edlcm" in evaluation
