"""The model card: ``RUN/model/README.md``, written with every model that train.py saves.

A card is what a user of the hub expects to find next to weights: YAML front matter (library,
``sentence-similarity`` pipeline tag, tags including ``matryoshka``, base model, training data,
language, license when the base model's card states one), the dev table per dim (and per layer
for 2D) with retention, the training recipe, and usage snippets for `transformers` (our pooling
written out), the sentence-transformers library (``truncate_dim``) and our `Encoder`.

Every fact comes from the files of the run and the model folder (``config.json``, ``run.json``,
``eval_dev.json``, ``model/mrl_config.json``...), so ``write_card`` can also (re)write the card of
an older run. ``eval.py --add-to-card`` adds its test results as sections that a later call for
the same set replaces. The front matter is written as ``key: value`` lines whose values are JSON,
which is also valid YAML (flow style), so any YAML reader and a three-line parser agree on it.

    python -m mrl.card runs/stsb-matryoshka/model                 # (re)write the card of a run
    python -m mrl.card runs/stsb-matryoshka/model --add eval_test.json   # add an eval.py --json file
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrl import objectives
from mrl.checkpoint import write_text_atomic
from mrl.evals import EVALUATORS, evaluator_for
from mrl.evals.budgets import budget_section
from mrl.pooling import POOLINGS
from mrl.runtime import main_error

CARD_FILE = "README.md"
_EVAL_START, _EVAL_END = "<!-- mrl:eval {} -->", "<!-- /mrl:eval {} -->"
_EVAL_HEADING = "## Evaluation (eval.py)\n\nTest results added by `eval.py --add-to-card`.\n\n"

# Common words that mark a text as English (for the card's `language`; CJK is told by its script).
_ENGLISH = set("the a an is are was were of in on and to with for at by it this that".split())


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def parse_front_matter(text: str) -> dict[str, Any]:
    """Top-level keys of a card's front matter: ``key: value`` lines and ``- item`` block lists.

    Enough for the scalar fields we inherit from a base model's card (license, language); values
    that are JSON (our own cards) are decoded, other values are kept as stripped strings.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    meta: dict[str, Any] = {}
    key = None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        if line.startswith(("- ", "  - ")) and key is not None:
            if not isinstance(meta.get(key), list):
                meta[key] = []
            meta[key].append(line.strip()[2:].strip().strip("\"'"))
        elif ":" in line and not line.startswith((" ", "#")):
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            try:
                meta[key] = json.loads(value) if value else None
            except ValueError:
                meta[key] = value.strip("\"'")
    return meta


def base_model_card(name_or_path: str) -> dict[str, Any]:
    """The front matter of the base model's own card, from its folder or the local hub cache
    (never the network: an offline run must not wait here); {} when there is none."""
    path = Path(name_or_path) / CARD_FILE
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, CARD_FILE)
        except Exception:  # not a valid repo id, no cache: no card to inherit from
            cached = None
        if not isinstance(cached, str):
            return {}
        path = Path(cached)
    return parse_front_matter(path.read_text(encoding="utf-8", errors="replace"))


def guess_language(texts: Sequence[str]) -> str | None:
    """ "zh", "ja", "ko" or "en" for a sample of training texts, None when unsure.

    By script for CJK (the share of Han, kana and Hangul characters among the letters), by common
    function words for English. Good enough for a card's ``language`` field; a wrong guess is
    one line to edit before uploading.
    """
    counts = {"han": 0, "kana": 0, "hangul": 0, "letters": 0}
    words = english = 0
    for text in texts:
        for ch in text:
            code = ord(ch)
            if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF:
                counts["han"] += 1
            elif 0x3040 <= code <= 0x30FF:
                counts["kana"] += 1
            elif 0xAC00 <= code <= 0xD7AF:
                counts["hangul"] += 1
            if ch.isalpha():
                counts["letters"] += 1
        tokens = re.findall(r"[a-z]+", text.lower())
        words += len(tokens)
        english += sum(token in _ENGLISH for token in tokens)
    letters = max(1, counts["letters"])
    if counts["kana"] / letters > 0.1:
        return "ja"
    if counts["hangul"] / letters > 0.3:
        return "ko"
    if counts["han"] / letters > 0.3:
        return "zh"
    if words and english / words > 0.15:
        return "en"
    return None


def _is_hub_id(name: str | None) -> bool:
    """ "org/name" (or "name") that is not a local path."""
    return bool(name) and not Path(name).exists() and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def _hub_dataset(spec: str) -> str | None:
    """The dataset id of a --train-data / --eval-data value, or None for a local file."""
    name = spec.partition("@")[0]
    return name if _is_hub_id(name) and Path(name).suffix.lower() not in (".csv", ".tsv", ".jsonl") else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _trains_layers(meta: dict[str, Any]) -> bool:
    """Whether the model was trained as 2D (several depths): its wrapper's entry in the objectives
    table says so; a name this code does not know (a fork's run) by the layers it evaluated."""
    entry = objectives.WRAPPERS.get(meta.get("two_d", "off"))
    return entry.all_layers if entry is not None else bool(meta.get("layers"))


def _entry_text(table: dict[str, Any], name: str, config: dict[str, Any]) -> str:
    """An objectives-table entry's card text (`mrl.objectives`) filled from the run's
    config.json; "" when it has none or the name or a field is unknown here (a fork's run)."""
    entry = table.get(name)
    # A list flag reads as it was typed (--directions query-doc query-query), not as Python.
    flat = {key: " ".join(map(str, v)) if isinstance(v, list) else v for key, v in config.items()}
    try:
        return entry.card.format(**flat) if entry is not None else ""
    except (KeyError, IndexError, ValueError):
        return ""


def _front_matter(meta: dict[str, Any]) -> str:
    lines = [f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in meta.items() if value]
    return "---\n" + "\n".join(lines) + "\n---\n"


def _example_dim(dims: list[int], full: int) -> int:
    """A dim to show in the snippets: 64 if trained, else the smallest trained dim >= 1/8 of the
    full one, else the smallest trained dim."""
    if 64 in dims:
        return 64
    candidates = sorted(d for d in dims if d < full and 8 * d >= full)
    return candidates[0] if candidates else min(dims)


EXAMPLE_SENTENCES = ["A man is playing a guitar.", "Someone plays music."]


# The transformers snippet's helper for files beside the weights (heads, adaptors).
MODEL_FILE_CODE = """
from safetensors.torch import load_file


def model_file(name):  # one of the model's files: in its local folder, or fetched from the hub
    import os

    if os.path.isdir(model_id):
        return os.path.join(model_id, name)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(model_id, name)
"""


def _adaptor_code(recipe: dict[str, Any]) -> str:
    """The transformers snippet's lines that apply a saved adaptor (mrl/heads.py `head_modules`:
    [Normalize, Dense] for a linear or rotation adaptor, the MLP Adaptor module itself)."""
    normalize = recipe.get("normalize_input", True)
    x = "F.normalize(embeddings, dim=-1)" if normalize else "embeddings"
    if recipe["kind"] == "mlp":
        act = {"gelu": "F.gelu", "relu": "F.relu", "tanh": "torch.tanh"}[recipe.get("activation", "gelu")]
        return f"""
head = load_file(model_file("2_Adaptor/model.safetensors"))  # the MLP adaptor: x + W2 act(W1 x + b1) + b2
x = {x}
hidden = {act}(x @ head["fc1.weight"].T + head["fc1.bias"])
embeddings = x + hidden @ head["fc2.weight"].T + head["fc2.bias"]"""
    path = f"{2 + bool(normalize)}_Dense/model.safetensors"
    return f"""
dense = load_file(model_file("{path}"))  # the {recipe["kind"]} adaptor: W x + b
embeddings = {x} @ dense["linear.weight"].T + dense["linear.bias"]"""


def usage_snippets(model_ref: str, meta: dict[str, Any], do_lower_case: bool) -> dict[str, str]:
    """The three usage snippets (Python source), keyed "transformers", "sentence-transformers", "mrl".

    The transformers one leaves ``embeddings`` (N, D), un-normalised as our Encoder returns them,
    ``small``, their first ``dim`` values re-normalised (slice first, then normalise), and for 2D
    models ``shallow``, the same from the first k layers.
    """
    full = int(meta["dim"])
    dims = list(meta.get("dims") or [full])
    dim = _example_dim(dims, full)
    earlier = [layer for layer in meta.get("layers") or [] if layer < meta["num_layers"]]
    k = earlier[len(earlier) // 2] if earlier else None
    lower = (
        "\nsentences = [s.lower() for s in sentences]  # the model was trained on lower-cased text"
        * bool(do_lower_case)
    )
    forward = (
        "out = model(**batch, output_hidden_states=True)  # hidden_states[k]: the output of block k"
        if k
        else "out = model(**batch)"
    )
    # Exit heads (mrl/heads.py ExitHead): the last depth's is the Dense module 2_Dense, the
    # shallow depths' are in exit_heads.safetensors; the snippet applies the ones it uses.
    shallow_head = k is not None and k in (meta.get("exit_heads") or [])
    adaptor_code = _adaptor_code(meta["adaptor"]) if meta.get("adaptor") else ""
    uses_files = shallow_head or bool(meta.get("exit_head_last_depth")) or bool(adaptor_code)
    files_code = MODEL_FILE_CODE if uses_files else ""
    last_head = (
        """
dense = load_file(model_file("2_Dense/model.safetensors"))  # the last layer's exit head
embeddings = embeddings @ dense["linear.weight"].T + dense["linear.bias"]"""
        if meta.get("exit_head_last_depth")
        else ""
    )
    transformers_code = f"""import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

model_id = {json.dumps(model_ref)}  # this folder, or its hub id once uploaded
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModel.from_pretrained(model_id).eval()
{files_code}

{POOLINGS[meta["pooling"]].card_code}


sentences = {json.dumps(EXAMPLE_SENTENCES)}{lower}
max_length = {meta["max_seq_length"]}
batch = tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
with torch.no_grad():
    {forward}
embeddings = pool(out.last_hidden_state, batch["attention_mask"])  # (N, {full}){last_head}{adaptor_code}
dim = {dim}  # any trained Matryoshka dim: {", ".join(map(str, dims))}
small = F.normalize(embeddings[:, :dim], dim=-1)  # slice first, then normalise
similarity = small @ small.T  # cosine similarity at {dim} dims
"""
    if k and shallow_head:
        transformers_code += f"""# 2D: the first {k} layers alone (BERT-like models: no norm after blocks),
# then layer {k}'s exit head x + W x + b
heads = load_file(model_file("exit_heads.safetensors"))
x = pool(out.hidden_states[{k}], batch["attention_mask"])
x = x + x @ heads["{k}.linear.weight"].T + heads["{k}.linear.bias"]
shallow = F.normalize(x[:, :dim], dim=-1)
"""
    elif k:
        transformers_code += f"""# 2D: the first {k} layers alone (BERT-like models: no norm after the blocks)
shallow = F.normalize(pool(out.hidden_states[{k}], batch["attention_mask"])[:, :dim], dim=-1)
"""
    st_code = f"""from sentence_transformers import SentenceTransformer

model = SentenceTransformer({json.dumps(model_ref)}, truncate_dim={dim})
embeddings = model.encode({json.dumps(EXAMPLE_SENTENCES)})  # (2, {dim})
similarity = model.similarity(embeddings, embeddings)  # cosine: the stored vectors are not normalised
"""
    mrl_code = f"""from mrl.model import Encoder

encoder = Encoder({json.dumps(model_ref)})
sentences = {json.dumps(EXAMPLE_SENTENCES)}
full = encoder.encode(sentences)  # (2, {full}) unit vectors
small = encoder.encode(sentences, dim={dim})  # (2, {dim}): the first {dim} values, re-normalised
"""
    if k:
        mrl_code += (
            f"shallow = encoder.encode(sentences, layers={k}, dim={dim})  # runs only the first {k} layers\n"
        )
    return {"transformers": transformers_code, "sentence-transformers": st_code, "mrl": mrl_code}


def _opening(meta: dict[str, Any], base: str | None, dims: list[int]) -> str:
    """The card's first sentence: what the model is (an encoder, or an adaptor on a frozen one)."""
    adaptor = meta.get("adaptor")
    what = (
        f"A Matryoshka-Adaptor trained with `mrl` on the frozen `{base or 'an encoder'}`: a "
        f"`{adaptor['kind']}` map after pooling makes the first d values of the {meta['dim']}-dim "
        f"embedding useful on their own (trained d: {', '.join(map(str, dims))})"
        if adaptor
        else f"A Matryoshka sentence encoder trained with `mrl` from `{base or 'an encoder'}`: "
        f"its {meta['dim']}-dim embedding stays useful when cut to its first d values "
        f"(trained d: {', '.join(map(str, dims))})"
    )
    if _trains_layers(meta):
        what += (
            f", and (2D, `{meta['two_d']}`) when only its first layers run (evaluated: {meta.get('layers')})"
        )
    return what


def build_card(
    model_dir: str | Path,
    run_dir: str | Path | None = None,
    sample_texts: Sequence[str] | None = None,
    wall_seconds: float | None = None,
    model_ref: str | None = None,
    resumed_at: int | None = None,
) -> str:
    """The card's Markdown. model_dir: a saved model (`Encoder.save`); run_dir: the run that
    trained it (default: model_dir's parent when that holds a config.json); sample_texts: some
    training texts (for `language`); wall_seconds: the training process's wall time (resumed_at:
    the step it resumed at, if it did); model_ref: how the snippets name the model (default:
    model_dir as given)."""
    model_dir = Path(model_dir)
    if run_dir is None and (model_dir.parent / "config.json").is_file():
        run_dir = model_dir.parent
    meta = _read_json(model_dir / "mrl_config.json") or {}
    st_config = _read_json(model_dir / "sentence_bert_config.json") or {}
    if "dim" not in meta:
        raise ValueError(f"{model_dir}: no mrl_config.json with the model's dims (save it with Encoder.save)")
    config = _read_json(Path(run_dir) / "config.json") if run_dir else None
    run = (_read_json(Path(run_dir) / "run.json") if run_dir else None) or {}
    dev = (_read_json(Path(run_dir) / "eval_dev.json") if run_dir else None) or {}
    config = config or {}
    derived = config.get("derived", {})
    base = config.get("model") or meta.get("base_model")
    base_card = base_model_card(base) if base else {}

    two_d = _trains_layers(meta)
    datasets = [d for d in [_hub_dataset(config.get("train_data", ""))] if d]
    language = guess_language(sample_texts) if sample_texts else None
    language = language or base_card.get("language")
    tags = ["mrl", "matryoshka", "sentence-similarity", "feature-extraction", "transformers"]
    tags += ["2d-matryoshka"] * two_d + ([meta["loss"]] if meta.get("loss") else [])
    front = {
        "library_name": "sentence-transformers",  # the folder has that library's layout (modules.json)
        "pipeline_tag": "sentence-similarity",
        "tags": tags,
        "base_model": base if _is_hub_id(base) else None,
        "datasets": datasets,
        "language": [language] if isinstance(language, str) else language,
        "license": base_card.get("license"),
    }

    name = model_dir.parent.name if model_dir.name == "model" else model_dir.name
    dims = meta.get("dims") or [meta["dim"]]
    out = [_front_matter(front), f"# {name}\n"]
    adaptor = meta.get("adaptor")  # train.py --adaptor: a map after pooling, the encoder frozen
    what = _opening(meta, base, dims)
    out.append(what + ". Slice first, then normalise: `normalize(e[:d])`.\n")
    if not _is_hub_id(base) and base:
        out.append(
            f"Base model: the local folder `{base}` (not a hub id: add `base_model: <its hub id>` "
            "to the front matter before uploading).\n"
        )

    out.append("## Dev results\n")
    if dev:
        step = meta.get("trained_steps") or (adaptor or {}).get("trained_steps")
        for set_name, records in dev.items():
            kind = evaluator_for(records)  # eval_dev.json holds records only
            out.append(f"### {set_name} (dev, after step {step}): {kind.title} ({kind.retention})\n")
            out.append(kind.table(records) + "\n")
        out.append(
            "Dev sets choose models; report test numbers with `eval.py` (`--add-to-card` adds them here).\n"
        )
    else:
        out.append("No dev evaluation was run with this model (no `--eval-data`).\n")

    out.append("## Training\n")
    out.append(_recipe_table(config, derived, meta, run, wall_seconds, resumed_at, base) + "\n")
    if run.get("argv") is not None:
        out.append(
            "Command:\n\n```bash\npython train.py " + " ".join(map(_shell_quote, run["argv"])) + "\n```\n"
        )

    snippets = usage_snippets(model_ref or str(model_dir), meta, bool(st_config.get("do_lower_case")))
    out.append("## Usage\n")
    out.append("### transformers (our pooling written out)\n")
    out.append("```python\n" + snippets["transformers"] + "```\n")
    out.append("### sentence-transformers (`truncate_dim`)\n")
    out.append(
        "The folder carries that library's module files, the adaptor as its Normalize and Dense "
        "modules: `truncate_dim` slices the adapted vector.\n"
        if adaptor and adaptor["kind"] != "mlp"
        else "The MLP adaptor is `mrl`'s own module, which that library cannot load: use the "
        "transformers or mrl snippet.\n"
        if adaptor
        else "The folder carries that library's module files (no Normalize module: the cosine "
        "normalises each prefix).\n"
    )
    out.append("```python\n" + snippets["sentence-transformers"] + "```\n")
    out.append("### mrl\n")
    out.append("```python\n" + snippets["mrl"] + "```\n")
    return "\n".join(out)


def _adaptor_rows(recipe: dict[str, Any], derived: dict[str, Any]) -> list[tuple[str, Any]]:
    """The recipe table's rows of an adapted model (``mrl_config.json``'s "adaptor" entry)."""
    data = recipe.get("data") or {}
    weights = " ".join(f"{name}={weight:g}" for name, weight in (recipe.get("loss_weights") or {}).items())
    corpus = f"`{data['corpus']}`" if data.get("corpus") else "precomputed vectors"
    if data.get("corpus_texts"):
        corpus += f" ({data['corpus_texts']:,} texts)"
    total = derived.get("total_steps")
    rows = [
        ("adaptor", f"`{recipe['kind']}`, started from `{recipe.get('init')}`, on cached embeddings"),
        ("adaptor losses", f"{weights} (k {recipe.get('k')}, temperature {recipe.get('temperature')})"),
        ("corpus", corpus),
        ("pairs", f"`{data['pairs']}` ({data.get('n_pairs', 0):,} pairs)" if data.get("pairs") else None),
        ("steps", f"{recipe.get('trained_steps')} of {total}" if total else recipe.get("trained_steps")),
        ("batch", recipe.get("batch_size")),
        ("learning rate", recipe.get("lr")),
    ]
    return [(key, value) for key, value in rows if value not in (None, "", [])]


def _shell_quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\"'\"'") + "'"


def _recipe_table(config, derived, meta, run, wall_seconds, resumed_at, base) -> str:
    rows: list[tuple[str, Any]] = []

    def add(key: str, value: Any) -> None:
        if value not in (None, "", []):
            rows.append((key, value))

    add("base model", f"`{base}`" if base else None)
    if meta.get("adaptor"):
        rows += _adaptor_rows(meta["adaptor"], derived)
        config = {}  # the encoder's own recipe rows (loss, layers, ...) do not apply
    if config:
        examples = derived.get("train_examples")
        add("training data", f"`{config['train_data']}`" + (f" ({examples:,} rows)" if examples else ""))
        add("dev data", ", ".join(f"`{d}`" for d in config.get("eval_data") or []) or "none")
        text = _entry_text(objectives.BASE_LOSSES, config["loss"], config)
        add("loss", f"{config['loss']} ({text})" if text else config["loss"])
        if config.get("hardness", "off") != "off":  # in-batch negatives weighted by hardness (issue 25)
            add("hardness weighting", objectives.HARDNESS_CARD.format(**config))
    elif meta.get("loss"):
        add("loss", meta["loss"])
    add("Matryoshka dims", ", ".join(map(str, meta.get("dims") or [])))
    if config.get("dim_weights"):
        add("dim weights", ", ".join(map(str, config["dim_weights"])))
    if config.get("n_dims_per_step"):
        add("dims per step", config["n_dims_per_step"])
    if _trains_layers(meta):
        detail = f"`--2d {meta['two_d']}`, evaluated layers {meta.get('layers')}"
        if meta.get("layer_dim_pairs"):
            detail += ", (layer, dim) pairs " + " ".join(f"{l}:{d}" for l, d in meta["layer_dim_pairs"])
        text = _entry_text(objectives.WRAPPERS, meta["two_d"], config) if config else ""
        add("layers (2D)", detail + (f", {text}" if text else ""))
    elif not meta.get("adaptor"):
        add("layers", f"all {meta['num_layers']} (no 2D training)")
    distills = []  # --layer-distill / --prefix-distill: each term's own card text
    for key, students in (("layer_distill", "shallow layers"), ("prefix_distill", "prefixes")):
        name = config.get(key, "off")
        if name != "off":
            text = _entry_text(objectives.DISTILLS, name, config)
            distills.append(f"{students}: `{name}`" + (f" ({text})" if text else ""))
    if distills:
        data = config.get("distill_data") or []
        extra = f", plus {len(data)} file(s) of plain sentences (`--distill-data`)" if data else ""
        add("self-distillation", "; ".join(distills) + f", weight {config['distill_weight']}{extra}")
    if config and config.get("teacher"):  # --teacher: a frozen model whose embeddings it learnt
        name = config.get("teacher_loss", "mse")
        text = _entry_text(objectives.TEACHERS, name, config)
        width = f", {derived['teacher_dim']} dims" if derived.get("teacher_dim") else ""
        data = config.get("distill_data") or []
        texts = "the training texts" + (f" and {len(data)} file(s) of `--distill-data`" if data else "")
        add(
            "teacher",
            f"`{config['teacher']}` (frozen{width}; embeddings computed once): `{name}`"
            + (f" ({text})" if text else "")
            + f" at every dim, weight {config.get('teacher_weight')}, on {texts}",
        )
    if config and config.get("exit_heads", "none") != "none":
        how = "learning on detached vectors" if config.get("exit_head_detach") else "trained with the model"
        add("exit heads", f"`--exit-heads {config['exit_heads']}`, lr {config['exit_head_lr']}, {how}")
    if config:
        total = derived.get("total_steps")
        add("steps", f"{meta.get('trained_steps')} of {total}" if total else meta.get("trained_steps"))
        batch = f"{config['batch_size']} per device"
        if derived.get("effective_batch") and derived["effective_batch"] != config["batch_size"]:
            batch += f", {derived['effective_batch']} effective"
        add("batch", batch)
        add(
            "learning rate",
            f"{config['lr']:g}, {config['scheduler']} after {config['warmup_ratio']:.0%} warmup, "
            f"weight decay {config['weight_decay']:g}, clip {config['max_grad_norm']:g}",
        )
        add("precision", config["precision"])
        add("max sequence length", meta.get("max_seq_length", config["max_seq_length"]))
        add("pooling", config["pooling"])
        add("seed", config["seed"])
    if wall_seconds is not None:
        where = f" on {run['device']}" + (f" ({run['device_name']})" if run.get("device_name") else "")
        where += f", {run['threads']} threads" if run.get("threads") and run.get("device") == "cpu" else ""
        resumed = (
            f"; this process only: it resumed the run at step {resumed_at}" if resumed_at is not None else ""
        )
        add("wall time", f"{_duration(wall_seconds)} (start to saved model{where}{resumed})")
    if meta.get("adaptor"):
        add("seed", meta["adaptor"].get("seed"))
    if run.get("git_commit"):
        add(
            "code",
            f"mrl commit `{run['git_commit'][:12]}`"
            + (" (with uncommitted changes)" if run.get("git_dirty") else ""),
        )
    if run.get("torch"):
        add(
            "versions",
            f"torch {run['torch']}, transformers {run.get('transformers')}, python {run.get('python')}",
        )
    lines = ["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def write_card(
    model_dir: str | Path,
    run_dir: str | Path | None = None,
    sample_texts: Sequence[str] | None = None,
    wall_seconds: float | None = None,
    resumed_at: int | None = None,
) -> Path:
    """Write ``model_dir/README.md`` (see `build_card`), keeping the eval sections an earlier
    card had. Returns its path."""
    path = Path(model_dir) / CARD_FILE
    sections = _eval_sections(path.read_text(encoding="utf-8")) if path.is_file() else {}
    card = build_card(model_dir, run_dir, sample_texts, wall_seconds, resumed_at=resumed_at)
    for name, text in sections.items():
        card = _put_section(card, name, text)
    write_text_atomic(path, card)
    return path


def _eval_sections(card: str) -> dict[str, str]:
    pattern = re.compile(r"<!-- mrl:eval (.+?) -->\n(.*?)<!-- /mrl:eval \1 -->\n", re.S)
    return {m.group(1): m.group(2) for m in pattern.finditer(card)}


def _put_section(card: str, name: str, text: str) -> str:
    """Replace the eval section ``name``, or add it at the end of "## Evaluation (eval.py)"
    (made before "## Usage" if the card has none yet)."""
    start, end = _EVAL_START.format(name), _EVAL_END.format(name)
    block = f"{start}\n{text}{end}\n"
    if start in card and end in card:
        i, j = card.index(start), card.index(end) + len(end) + 1
        return card[:i] + block + card[j:]
    usage = card.find("## Usage\n")
    usage = len(card) if usage < 0 else usage
    if _EVAL_HEADING not in card:
        card = card[:usage] + _EVAL_HEADING + card[usage:]
        usage += len(_EVAL_HEADING)
    return card[:usage] + block + "\n" + card[usage:]


def eval_sections(results: dict[str, Any]) -> dict[str, str]:
    """Markdown per evaluated set of an ``eval.py`` result (the ``--json`` content), keyed
    ``"<kind> <set>"``: each evaluator of `mrl.evals.EVALUATORS` writes its own section."""
    return {
        f"{kind} {name}": evaluator.card_section(name, entry) + budget_section(evaluator, entry)
        for kind, evaluator in EVALUATORS.items()
        for name, entry in results.get(evaluator.section, {}).items()
    }


def set_source(entry: dict[str, Any]) -> str | None:
    """Where an evaluated set was read from (an STS file's ``source``, a BEIR ``folder``), made
    absolute when it is a local path; None for an evaluator that records neither."""
    source = entry.get("source") or entry.get("folder")
    if not source:
        return None
    return str(Path(source).resolve()) if Path(source).exists() else str(source)


_SOURCE = re.compile(r"\A<!-- mrl:source (.*?) -->\n")


def card_clashes(model_dir: str | Path, sources: dict[str, str | None]) -> list[str]:
    """The sets of ``sources`` (``"<kind> <set>"`` -> `set_source`) whose name the card already
    holds for another file: sets are keyed by name (``s1/test.csv`` and ``s2/test.csv`` are both
    "test"), so adding one would silently replace the other's table. One line per clash."""
    path = Path(model_dir) / CARD_FILE
    sections = _eval_sections(path.read_text(encoding="utf-8")) if path.is_file() else {}
    clashes = []
    for key, source in sources.items():
        found = _SOURCE.match(sections.get(key, ""))
        if source and found and found.group(1) != source:
            clashes.append(f"the card's '{key}' table is from {found.group(1)}, this one is from {source}")
    return clashes


def add_eval_to_card(model_dir: str | Path, results: dict[str, Any]) -> Path:
    """Put each set of an ``eval.py`` result into ``model_dir/README.md`` (written first if the
    folder has no card), replacing an earlier section for the same set (the same name read from
    the same file; another file of the same name is a ValueError, see `card_clashes`). The
    read-modify-write holds an exclusive lock on the folder, so two processes adding results at
    once both keep theirs. Returns the card's path."""
    import fcntl

    path = Path(model_dir) / CARD_FILE
    sections = eval_sections(results)
    sources = {
        f"{kind} {name}": set_source(entry)
        for kind, evaluator in EVALUATORS.items()
        for name, entry in results.get(evaluator.section, {}).items()
    }
    folder = os.open(model_dir, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        clashes = card_clashes(model_dir, sources)
        if clashes:
            raise ValueError(f"--add-to-card: {'; '.join(clashes)}; rename one (sets are keyed by name)")
        if not path.is_file():
            write_card(model_dir)
        card = path.read_text(encoding="utf-8")
        for name, text in sections.items():
            source = sources.get(name)
            card = _put_section(card, name, (f"<!-- mrl:source {source} -->\n" if source else "") + text)
        write_text_atomic(path, card)
    finally:
        os.close(folder)  # releases the lock
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Write or refresh a saved model's card (README.md).")
    parser.add_argument("model", help="a model folder saved by train.py (RUN/model)")
    parser.add_argument("--add", nargs="+", default=[], metavar="JSON", help="eval.py --json files to add")
    args = parser.parse_args(argv)
    results = []
    for file in args.add:  # every file read before the card is touched
        try:
            results.append(json.loads(Path(file).read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            main_error(f"--add {file}: cannot read it as eval.py JSON ({str(error).splitlines()[0]})")
    card = Path(args.model) / CARD_FILE
    before = card.read_bytes() if card.is_file() else None
    try:
        path = write_card(args.model)
        for result in results:
            path = add_eval_to_card(args.model, result)
    except (OSError, ValueError, KeyError) as error:  # no folder, not a saved model, a clash of set names
        if before is not None and card.read_bytes() != before:  # all or nothing: the card as it was
            card.write_bytes(before)
        main_error(str(error).splitlines()[0] if str(error) else repr(error))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
