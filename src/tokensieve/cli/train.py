"""``tokensieve train select IN OUT --keep 0.5``: keep the samples of a JSONL / Parquet
dataset whose informative tokens score best (or a seeded random share)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import EXIT_OK


def _share(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a fraction in (0, 1], e.g. 0.5, got "
                                         f"{value!r}") from None


def _select(args: argparse.Namespace) -> int:
    from ..dataset.select import select_dataset

    report = select_dataset(
        args.input, args.output, args.keep, field=args.field, prompt_field=args.prompt_field,
        response_field=args.response_field, method=args.method, model=args.model,
        informative=args.informative, template=args.template, max_tokens=args.max_tokens,
        max_chars=args.max_chars, batch_size=args.batch_size, seed=args.seed,
        id_field=args.id_field, lowest=args.lowest, overwrite=args.overwrite,
        device=args.device, dtype=args.dtype, progress=False if args.no_progress else None)
    data = report.to_dict()
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(f"{report.output}: {report.summary()}", file=sys.stderr)
        if not args.report:
            for row in report.lowest:
                print(f"  lowest: record {row['pos'] + 1} id={row['id']!r} score={row['score']} "
                      f"ifd={row['ifd']} kept={row['kept']}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK


def add(sub) -> None:
    from ..dataset.records import DEFAULT_MAX_CHARS
    from ..train.select import DEFAULT_INFORMATIVE, DEFAULT_MAX_TOKENS, SELECT_METHODS, TEMPLATES
    from .common import Parser

    t = sub.add_parser("train", help="token-selective training tools: select the samples "
                       "worth training on (tokensieve train select IN OUT --keep 0.5)")
    tsub = t.add_subparsers(dest="train_command", required=True, parser_class=Parser)
    s = tsub.add_parser("select", help="keep the best --keep fraction of a JSONL / Parquet "
                        "dataset's samples, scored on their informative tokens (T-SHIRT's "
                        "selective IFD for prompt / response pairs)")
    s.add_argument("input", metavar="IN", help="input .jsonl or .parquet")
    s.add_argument("output", metavar="OUT", help="output in the input's format: the kept "
                   "records in input order, whole (JSONL lines byte for byte)")
    s.add_argument("--keep", type=_share, default=0.5, metavar="FRACTION",
                   help="fraction of samples kept, in (0, 1] (default 0.5)")
    s.add_argument("--field", default="text", metavar="F", help="the text to score (plain "
                   "text: mean loss of its informative tokens; default 'text')")
    s.add_argument("--prompt-field", default=None, metavar="P", help="with --response-field: "
                   "score each response by its selective IFD given this prompt")
    s.add_argument("--response-field", default=None, metavar="R")
    s.add_argument("--method", default="tshirt", choices=list(SELECT_METHODS),
                   help="tshirt (default) or random (seeded baseline, no model)")
    s.add_argument("--model", default="default", help="scoring causal LM: 'default' "
                   "(embedded SmolLM2) or a local folder")
    s.add_argument("--informative", type=_share, default=DEFAULT_INFORMATIVE, metavar="SHARE",
                   help="share of each sample's tokens the score reads, in (0, 1] (default "
                   f"{DEFAULT_INFORMATIVE})")
    s.add_argument("--template", default="plain", choices=list(TEMPLATES),
                   help="how a prompt precedes its response: plain (prompt, newline) or chat "
                   "(the tokenizer's chat template)")
    s.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help=f"tokens per sample scored (longer ones are cut for scoring only; "
                   f"default {DEFAULT_MAX_TOKENS}, or the model's context if shorter)")
    s.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, metavar="N",
                   help=f"a longer text field is an error (default {DEFAULT_MAX_CHARS})")
    s.add_argument("--batch-size", type=int, default=8, metavar="N")
    s.add_argument("--seed", type=int, default=0, help="random method's seed")
    s.add_argument("--id-field", default="id", metavar="F", help="names records in the "
                   "report (default 'id'; else the record's position)")
    s.add_argument("--lowest", type=int, default=10, metavar="N",
                   help="lowest-ranked samples listed in the report (default 10)")
    s.add_argument("--report", default=None, metavar="FILE", help="write the report (JSON) "
                   "here")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16",
                                                          "auto"])
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=_select)
