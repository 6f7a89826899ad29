"""TrainConfig: defaults, config files, CLI precedence, loud validation, and the LR schedule."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mrl import objectives
from mrl.config import (
    GROUPS,
    TrainConfig,
    build_parser,
    config_diff,
    parse_config,
    validate_for_model,
    validate_for_run,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py lives in the repo root
from mrl.train.setup import lr_factor  # noqa: E402


def error_of(argv: list[str]) -> str:
    with pytest.raises(ValueError) as info:
        parse_config(argv)
    return str(info.value)


# ---------------------------------------------------------------------------------- defaults


def test_defaults_come_from_the_dataclass():
    config = parse_config([])
    assert config == TrainConfig()
    # A few documented defaults, written out independently of the dataclass.
    assert config.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert config.loss == "cosent"
    assert config.batch_size == 16
    assert config.lr == 2e-5
    assert config.two_d == "off"
    assert config.dims is None
    assert config.resume is False
    # List defaults are fresh objects, not shared between configs.
    other = TrainConfig()
    other.where.append("label=entailment")
    assert TrainConfig().where == []


def test_cli_flags_set_fields():
    config = parse_config(
        ["--dims", "64", "32", "--batch-size", "8", "--lr", "1e-4", "--no-detach-kl-target", "--2d", "fixed"]
    )
    assert config.dims == [64, 32]
    assert config.batch_size == 8
    assert config.lr == 1e-4
    assert config.detach_kl_target is False
    assert config.two_d == "fixed"  # the --2d flag maps to the field two_d
    assert parse_config(["--2d", "random"]).two_d == "random"


# ------------------------------------------------------------------------------ --help groups


def test_every_field_has_a_group_and_help_and_the_dataclass_is_in_group_order():
    fields = dataclasses.fields(TrainConfig)
    assert all(f.metadata["group"] in GROUPS and f.metadata["help"] for f in fields)
    order = [f.metadata["group"] for f in fields]
    seen = list(dict.fromkeys(order))  # each group once, contiguous, in GROUPS' order
    assert seen == [g for g in GROUPS if g in order] == list(GROUPS)
    assert sum(1 for a, b in zip(order, order[1:]) if a != b) == len(GROUPS) - 1


def test_help_lists_each_flag_under_its_group():
    text = build_parser().format_help()
    # argparse prints a group as "\n<title>:\n  <description>\n\n  --flag ..." in the order added.
    starts = [text.index(f"\n{title}:\n") for title in GROUPS]
    assert starts == sorted(starts)
    sections = dict(zip(GROUPS, (text[a:b] for a, b in zip(starts, starts[1:] + [len(text)]))))
    for f in dataclasses.fields(TrainConfig):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        where = [title for title, section in sections.items() if re.search(rf"\n  {flag}\b(?!-)", section)]
        assert where == [f.metadata["group"]], (flag, where)


def test_objective_flags_describe_the_tables_entries(monkeypatch):
    """--loss / --2d / the distillation flags list each entry's help and citation, read from the
    table when the parser is built: a newly registered entry describes itself there too."""
    flat = " ".join(build_parser().format_help().split())
    for table in (objectives.BASE_LOSSES, objectives.WRAPPERS, objectives.DISTILLS):
        for name, entry in table.items():
            assert f"{name} = {' '.join(entry.help.split())}" in flat, name
            assert entry.citation and " ".join(entry.citation.split()) in flat, name
    entry = objectives.BaseLossEntry(bind=None, help="my loss", citation="Me 2026")
    monkeypatch.setitem(objectives.BASE_LOSSES, "mine", entry)
    assert "mine = my loss [Me 2026]" in " ".join(build_parser().format_help().split())


# ------------------------------------------------------------------------------ config files


def test_json_config_supplies_defaults_and_cli_wins(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"dims": [64, 32, 16], "batch_size": 32, "lr": 1e-4, "scheduler": "cosine"}))
    config = parse_config(["--config", str(path)])
    assert (config.dims, config.batch_size, config.lr, config.scheduler) == ([64, 32, 16], 32, 1e-4, "cosine")
    assert config.seed == TrainConfig().seed  # untouched keys keep the dataclass default

    config = parse_config(["--config", str(path), "--batch-size", "4", "--dims", "16"])
    assert config.batch_size == 4 and config.dims == [16]  # CLI wins
    assert config.lr == 1e-4 and config.scheduler == "cosine"  # the file still supplies the rest


def test_toml_config_supplies_defaults_and_cli_wins(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'loss = "mnrl"\n'
        "dims = [128, 64]\n"
        "warmup-ratio = 0.2\n"  # hyphenated keys, as on the command line, are accepted too
        'two_d = "random"\n'
        "detach_kl_target = false\n"
    )
    config = parse_config(["--config", str(path)])
    assert config.loss == "mnrl"
    assert config.dims == [128, 64]
    assert config.warmup_ratio == 0.2
    assert config.two_d == "random"
    assert config.detach_kl_target is False
    config = parse_config(["--config", str(path), "--loss", "cosent", "--detach-kl-target"])
    assert config.loss == "cosent" and config.detach_kl_target is True
    assert config.dims == [128, 64]


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_unknown_config_key_names_file_and_key_with_hint(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_text('{"batch_sise": 8}' if suffix == ".json" else "batch_sise = 8\n")
    message = error_of(["--config", str(path)])
    assert str(path) in message
    assert "batch_sise" in message
    assert "batch_size" in message  # did-you-mean

    path.write_text('{"zzzqqq": 1}' if suffix == ".json" else "zzzqqq = 1\n")
    message = error_of(["--config", str(path)])
    assert str(path) in message and "zzzqqq" in message


def test_missing_or_unparsable_config_file(tmp_path):
    assert "--config" in error_of(["--config", str(tmp_path / "nope.json")])
    bad = tmp_path / "broken.toml"
    bad.write_text("dims = [64,\n")
    message = error_of(["--config", str(bad)])
    assert str(bad) in message


@pytest.mark.parametrize(
    "key, value",
    [("lr", "fast"), ("dims", 32), ("batch_size", "eight"), ("max_steps", 2.5), ("detach_kl_target", "no")],
)
def test_config_value_of_wrong_type_is_a_value_error_naming_the_key(tmp_path, key, value):
    # A wrong type in a config file must fail as loudly as a wrong CLI value (which argparse
    # rejects), with the file and key in the message -- not as a TypeError deep in validation.
    path = tmp_path / "typed.json"
    path.write_text(json.dumps({key: value}))
    message = error_of(["--config", str(path)])
    assert key in message


def test_config_file_ints_are_fine_for_float_fields(tmp_path):
    path = tmp_path / "ints.json"
    path.write_text(json.dumps({"lr": 1, "warmup_ratio": 0, "scale": 20}))
    config = parse_config(["--config", str(path)])
    assert (config.lr, config.warmup_ratio, config.scale) == (1.0, 0.0, 20.0)


def test_saved_config_json_with_derived_block_is_accepted(tmp_path):
    config = TrainConfig(dims=[32, 16, 8], batch_size=8, max_steps=6, model="some/model", eval_data=[])
    saved = {**config.to_dict(), "derived": {"total_steps": 6, "effective_batch": 8, "dims": [32, 16, 8]}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved, indent=2))
    assert parse_config(["--config", str(path)]) == config
    # ...and a run can be started from it with one field changed on the command line.
    assert parse_config(["--config", str(path), "--seed", "3"]) == dataclasses.replace(config, seed=3)


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--dims", "0"], "--dims"),
        (["--dims", "64", "-8"], "--dims"),
        (["--dims", "64", "32", "64"], "--dims"),
        (["--dims"], "--dims"),
        (["--dims", "64", "32", "--dim-weights", "1.0"], "--dim-weights"),
        (["--dims", "64", "32", "--dim-weights", "1", "1", "1"], "--dim-weights"),
        (["--dim-weights", "1", "2"], "--dim-weights"),
        (["--loss", "mnrl", "--batch-size", "1"], "--batch-size"),
        (["--loss", "mnrl-symmetric", "--batch-size", "1"], "--batch-size"),
        (["--layer-dim-pairs", "1:8"], "--layer-dim-pairs"),
        (["--2d", "random", "--layer-dim-pairs", "1:8"], "--layer-dim-pairs"),
        (["--2d", "fixed", "--layer-dim-pairs", "1-8"], "--layer-dim-pairs"),
        (["--2d", "fixed", "--layer-dim-pairs", "1:8:2"], "--layer-dim-pairs"),
        (["--2d", "fixed", "--layer-dim-pairs", "a:8"], "--layer-dim-pairs"),
        (["--resume"], "--resume"),
        (["--batch-size", "0"], "--batch-size"),
        (["--max-steps", "0"], "--max-steps"),
        (["--lr", "0"], "--lr"),
        (["--warmup-ratio", "1.0"], "--warmup-ratio"),
    ],
)
def test_validation_errors_name_the_flag(argv, flag):
    assert flag in error_of(argv)


def test_valid_corner_cases_pass():
    assert parse_config(["--loss", "cosent", "--batch-size", "1"]).batch_size == 1  # no negatives needed
    assert parse_config(["--loss", "mnrl", "--batch-size", "2"]).batch_size == 2
    config = parse_config(["--2d", "fixed", "--layer-dim-pairs", "1:8", "2:16", "3:32"])
    assert config.layer_dim_pairs == ["1:8", "2:16", "3:32"]
    assert parse_config(["--resume", "--output-dir", "runs/x"]).resume is True
    assert parse_config(["--dims", "64", "32", "--dim-weights", "1", "0.5"]).dim_weights == [1.0, 0.5]


def test_validate_for_model_rejects_dims_beyond_the_model():
    with pytest.raises(ValueError, match="--dims"):
        validate_for_model(TrainConfig(dims=[64, 32]), model_dim=32, num_layers=3)
    validate_for_model(TrainConfig(dims=[32, 16]), model_dim=32, num_layers=3)
    validate_for_model(TrainConfig(), model_dim=32, num_layers=3)  # default: the full dim only


@pytest.mark.parametrize("pair", ["4:16", "0:16", "2:64", "2:0"])
def test_validate_for_model_rejects_pairs_outside_the_model(pair):
    config = TrainConfig(two_d="fixed", layer_dim_pairs=["1:8", pair])
    with pytest.raises(ValueError, match="--layer-dim-pairs"):
        validate_for_model(config, model_dim=32, num_layers=3)
    validate_for_model(
        TrainConfig(two_d="fixed", layer_dim_pairs=["1:8", "3:32"]), model_dim=32, num_layers=3
    )


def test_validate_for_model_needs_two_layers_for_2d():
    with pytest.raises(ValueError, match="--2d"):
        validate_for_model(TrainConfig(two_d="random"), model_dim=32, num_layers=1)


# ------------------------------------------------------- flags that only the chosen objective reads

WRONG_MODE_CASES = [
    # Derived from the table entries' fields: a field no chosen entry reads keeps its default.
    (["--n-layers-per-step", "2"], "--n-layers-per-step needs --2d random"),
    (["--2d", "fixed", "--last-layer-weight", "0.5"], "--last-layer-weight needs --2d random"),
    (["--prior-layers-weight", "5"], "--prior-layers-weight needs --2d random"),
    (["--depth-weighting", "uniform"], "--depth-weighting needs --2d random"),
    (["--kl-weight", "0"], "--kl-weight needs --2d random|fixed"),
    (["--kl-temperature", "0.1"], "--kl-temperature needs --2d random|fixed"),
    (["--no-detach-kl-target"], "--detach-kl-target needs --2d random|fixed"),
    (["--layer-dim-pairs", "1:8"], "--layer-dim-pairs needs --2d fixed"),
    (["--2d", "random", "--layer-dim-pairs", "1:8"], "--layer-dim-pairs needs --2d fixed"),
    (["--distill-weight", "0.5"], "--distill-weight needs --layer-distill or --prefix-distill kl|mse|emb"),
    (
        ["--2d", "random", "--layer-distill", "emb", "--distill-temperature", "0.1"],
        "--distill-temperature needs --layer-distill or --prefix-distill kl",
    ),
    # The fixed wrapper's own check keeps its message (it says why).
    (
        ["--2d", "fixed", "--dim-weights", "1"],
        "--dim-weights and --n-dims-per-step apply to --2d off/random; fixed mode sums its pairs",
    ),
]


@pytest.mark.parametrize("argv, message", WRONG_MODE_CASES, ids=[" ".join(c[0]) for c in WRONG_MODE_CASES])
def test_a_flag_no_chosen_objective_reads_is_an_error(argv, message):
    assert error_of(argv) == message


def test_the_same_flags_pass_with_an_objective_that_reads_them():
    for argv in (
        ["--2d", "random", "--n-layers-per-step", "2", "--depth-weighting", "uniform", "--kl-weight", "0"],
        ["--2d", "fixed", "--layer-dim-pairs", "1:8", "--kl-temperature", "0.1", "--no-detach-kl-target"],
        ["--2d", "fixed", "--layer-distill", "emb", "--prefix-distill", "kl", "--distill-temperature", "0.1"],
        ["--prefix-distill", "mse", "--distill-weight", "0.5"],
    ):
        parse_config(argv)


def test_every_field_an_entry_reads_is_a_config_field():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for table in (objectives.BASE_LOSSES, objectives.WRAPPERS, objectives.DISTILLS):
        for name, entry in table.items():
            assert set(entry.fields) <= names, (name, set(entry.fields) - names)


def test_an_entry_reading_an_unknown_field_is_named(monkeypatch):
    entry = objectives.WrapperEntry(build=None, fields=("kl_wieght",))
    monkeypatch.setitem(objectives.WRAPPERS, "mine", entry)
    assert error_of([]) == "--2d mine: its table entry reads 'kl_wieght', which is not a config field"


# ------------------------------------------------------------ checks needing processes or the model


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--2d", "random", "--exit-heads", "shallow", "--exit-head-detach"],
            "--exit-head-detach runs in one process for now (under torchrun, leave it out: joint heads)",
        ),
        (
            ["--adaptor", "linear"],
            "--adaptor trains in one process (a few MB of cached vectors); run it with python",
        ),
        (
            ["--prefix-distill", "kl", "--distill-data", "plain.csv"],
            "--distill-data runs in one process for now (torchrun: leave it out)",
        ),
    ],
)
def test_validate_for_run_refuses_what_runs_in_one_process_only(argv, message):
    config = parse_config(argv)
    validate_for_run(config, world_size=1)
    with pytest.raises(ValueError) as info:
        validate_for_run(config, world_size=2)
    assert str(info.value) == message


def test_validate_for_model_refuses_detached_heads_after_a_models_own_head():
    config = parse_config(["--model", "org/with-dense", "--exit-heads", "all", "--exit-head-detach"])
    validate_for_model(config, model_dim=32, num_layers=3, has_head=False)
    with pytest.raises(ValueError) as info:
        validate_for_model(config, model_dim=32, num_layers=3, has_head=True)
    assert str(info.value) == (
        "--exit-head-detach: org/with-dense has a head after pooling; train its exit heads jointly"
    )
    validate_for_model(parse_config(["--exit-heads", "all"]), model_dim=32, num_layers=3, has_head=True)


def test_adaptor_embeddings_have_no_encoder_for_a_dev_set():
    argv = ["--adaptor", "linear", "--adaptor-embeddings", "corpus.npy"]
    assert parse_config(argv).eval_data == []  # the adaptor's default: no dev set
    message = error_of([*argv, "--eval-data", "dev.csv"])
    assert message == "--eval-data needs an encoder; with --adaptor-embeddings give --eval-data (none)"


def test_the_config_imports_no_adaptor_code():
    code = "import sys, mrl.config; assert 'mrl.adaptor' not in sys.modules, 'mrl.adaptor imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ------------------------------------------------------------------------------- depth weighting names


@pytest.mark.parametrize("name", ["proportional", "uniform", "log", "reciprocal"])
def test_depth_weightings_are_accepted(name):
    assert parse_config(["--2d", "random", "--depth-weighting", name]).depth_weighting == name


def test_default_depth_weighting_is_ours():
    assert TrainConfig().depth_weighting == "proportional"


@pytest.mark.parametrize("name, hint", [("linear", "'proportional'"), ("inverse", "'reciprocal'")])
def test_retired_depth_weightings_fail_loudly(name, hint, tmp_path):
    """'linear' meant l/L here but 1/(1+idx) upstream; 'inverse' was off by one: both stop with
    the new names, from a flag or from a hand-written config file."""
    message = error_of(["--2d", "random", "--depth-weighting", name])
    assert "--depth-weighting" in message and name in message and hint in message
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"two_d": "random", "depth_weighting": name}))
    assert hint in error_of(["--config", str(path)])


def test_an_old_run_config_keeps_its_meaning(tmp_path):
    """A run's config.json from before the rename says "linear" (the old default, l/L): it resumes
    and is read as "proportional", the same formula; an old "inverse" run fails loudly."""
    old = {
        **TrainConfig(two_d="random").to_dict(),
        "depth_weighting": "linear",
        "derived": {"total_steps": 6},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    config = parse_config(["--config", str(path)])
    assert config.depth_weighting == "proportional"
    assert config_diff(old, config) == []
    path.write_text(json.dumps({**old, "depth_weighting": "inverse"}))
    assert "'reciprocal'" in error_of(["--config", str(path)])


# ------------------------------------------------------------------------------- retired flags


def test_a_retired_flag_says_why_on_the_command_line_and_in_a_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(["--length-buckets", "4"])
    (line,) = capsys.readouterr().err.splitlines()
    assert info.value.code == 2 and line.startswith("error: --length-buckets is retired (issue 24)")
    assert "--padding-free buckets" in line
    assert "--length-buckets" not in build_parser().format_help()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"length_buckets": 4}))
    assert error_of(["--config", str(path)]).startswith(f"--config {path}: key 'length_buckets': --length")


@pytest.mark.parametrize(
    "saved, resumes",
    [({"length_buckets": 1}, True), ({"length_buckets": 4, "padding_free": "auto"}, True)]
    + [
        ({"length_buckets": 4, "padding_free": "off"}, False),
        ({"length_buckets": 4, "padding_free": None}, False),
    ],
)
def test_a_run_saved_with_a_retired_flag_resumes_or_says_why(tmp_path, saved, resumes):
    """A run's config.json from before issue 24 holds length_buckets: where it did nothing (1, the
    value of every recorded run, or with padding-free batches) the run resumes unchanged; a run
    that used it (or may have: saved before --padding-free existed) stops with one line naming
    the commit that resumes it."""
    run = tmp_path / "run"
    run.mkdir()
    old = {**TrainConfig(eval_data=[]).to_dict(), **saved, "derived": {"total_steps": 6}}
    old = {key: value for key, value in old.items() if value is not None or key != "padding_free"}
    (run / "config.json").write_text(json.dumps(old))
    argv = ["--resume", "--output-dir", str(run)]
    if resumes:
        config = parse_config(argv)
        assert config.padding_free == saved.get("padding_free", "auto") and config_diff(old, config) == []
    else:
        message = error_of(argv)
        assert "key 'length_buckets'" in message and "commit 3b9729e" in message and "\n" not in message


# ------------------------------------------------------------------------------- LR schedule


def test_linear_warmup_then_linear_decay_to_zero():
    warmup, total = 10, 110
    for step in range(warmup):
        assert lr_factor(step, warmup, total, "linear") == pytest.approx(step / 10)
    for step in range(warmup, total + 1):
        assert lr_factor(step, warmup, total, "linear") == pytest.approx((110 - step) / 100)
    assert lr_factor(0, warmup, total, "linear") == 0.0
    assert lr_factor(10, warmup, total, "linear") == pytest.approx(1.0)
    assert lr_factor(60, warmup, total, "linear") == pytest.approx(0.5)
    assert lr_factor(110, warmup, total, "linear") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(150, warmup, total, "linear") == 0.0  # never negative past the end


def test_cosine_is_half_at_the_midpoint_and_zero_at_the_end():
    warmup, total = 10, 110
    assert lr_factor(5, warmup, total, "cosine") == pytest.approx(0.5)  # same warmup
    assert lr_factor(10, warmup, total, "cosine") == pytest.approx(1.0)
    assert lr_factor(60, warmup, total, "cosine") == pytest.approx(0.5)
    assert lr_factor(35, warmup, total, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(110, warmup, total, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(200, warmup, total, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_constant_is_one_after_warmup():
    assert lr_factor(3, 6, 100, "constant") == pytest.approx(0.5)
    assert all(lr_factor(step, 6, 100, "constant") == 1.0 for step in range(6, 101))


def test_no_warmup_starts_at_the_peak():
    assert lr_factor(0, 0, 100, "linear") == 1.0
    assert lr_factor(0, 0, 100, "cosine") == 1.0
    assert lr_factor(50, 0, 100, "linear") == pytest.approx(0.5)


@pytest.mark.parametrize(
    "weighting, refused", [("uniform", True), ("reciprocal", True), ("proportional", False)]
)
def test_a_run_of_the_old_2d_candidates_is_not_continued_silently(tmp_path, weighting, refused):
    """Issue 25 changed which layers --2d random draws under upstream's weightings: a run saved
    before it (no embedding_candidate key) is refused by --resume and as --config, in one line;
    our own proportional weighting kept its candidates and resumes."""
    saved = {**TrainConfig().to_dict(), "two_d": "random", "depth_weighting": weighting, "derived": {}}
    saved.pop("embedding_candidate")
    saved.pop("length_buckets", None)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    argv = ["--resume", "--output-dir", str(tmp_path)]
    if refused:
        with pytest.raises(ValueError, match="candidates of before issue 25.*resume it with commit c6d797d"):
            parse_config(argv)
    else:
        assert parse_config(argv).depth_weighting == "proportional"


def test_an_adaptor_default_at_fault_is_not_blamed_on_a_config_file():
    """--adaptor-neighbours 600 fails against --adaptor's default --batch-size 512: the message
    says so instead of "set in --config None" (no file was given)."""
    with pytest.raises(ValueError) as error:
        parse_config(["--adaptor", "linear", "--adaptor-neighbours", "600", "--train-data", "x.jsonl"])
    assert "--config" not in str(error.value) and "--adaptor's default" in str(error.value)
