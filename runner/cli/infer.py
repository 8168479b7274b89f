"""The `export`, `predict` and `serve` sub-commands: arguments in, exit code out; the work lives in the modules."""
from __future__ import annotations

import argparse
from pathlib import Path

from runner.cli.options import db_url
from runner.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

DEFAULT_PORT = 8000
MAX_PIXELS_HELP = "refuse, from its header, an image declaring more pixels than this{} (default {:,}: 8192 x 8192)"


def pixel_count(text: str) -> int:
    """--max-pixels: a positive whole number, also written as 64e6."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels (e.g. 67108864 or 64e6)") from None
    if not (value >= 1 and value.is_integer()):
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of pixels >= 1 (e.g. 67108864 or 64e6)")
    return int(value)


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    from runner.inference.images import DEFAULT_MAX_PIXELS
    from runner.inference.predict import TTA_MODES

    export = sub.add_parser("export", parents=[common], help="a trained job as model.pt2 + model.onnx + model.json")
    export.add_argument("--job", default=None, help="job id or (a prefix of) its key")
    export.add_argument("--experiment", default=None, help="with --best: the experiment whose selected model to export")
    export.add_argument("--best", action="store_true", help="the report's selected model (best mean validation)")
    export.add_argument("--family", default=None, help="with --best: only this model family (cnn, gcnn, unet, gunet)")
    export.add_argument("--group", default=None, help="with --best: only this group (e.g. D4)")
    export.add_argument("--out", required=True, help="folder to create (must not exist)")
    predict = sub.add_parser("predict", help="predict with an exported model: images, folders, .h5, .npz, slides")
    predict.add_argument("artifact", help="a folder written by `export`")
    predict.add_argument("inputs", nargs="+", help="PNG/JPEG/TIFF files, folders, PCam _x.h5(.gz), .npz; or a slide")
    predict.add_argument("--out", default=None,
                         help="CSV to write (default predictions.csv); with --wsi a folder (default <slide>_heatmap)")
    predict.add_argument("--tta", choices=TTA_MODES, default="none",
                         help="d4: average over the eight rot90/flips (skipped when the model is already invariant)")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--backend", choices=("onnx", "pt2"), default="onnx", help="runtime (default onnx)")
    predict.add_argument("--wsi", action="store_true",
                         help="the input is a whole-slide image: class probabilities per patch (and, for a binary "
                         "model, a heatmap)")
    predict.add_argument("--mpp", type=float, default=None,
                         help="with --wsi: the slide's microns per pixel when its file does not say")
    predict.add_argument("--stride", type=int, default=None,
                         help="with --wsi: step between patches in model pixels (default: the patch size)")
    predict.add_argument("--min-tissue", type=float, default=0.5,
                         help="with --wsi: patches with less tissue than this share are skipped (default 0.5)")
    predict.add_argument("--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS,
                         help=MAX_PIXELS_HELP.format("; with --wsi the largest region read at once",
                                                     DEFAULT_MAX_PIXELS))
    serve = sub.add_parser("serve", help="an HTTP API for an exported model (FastAPI)")
    serve.add_argument("artifact", help="a folder written by `export`")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload (default 10)")
    serve.add_argument("--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS,
                       help=MAX_PIXELS_HELP.format(": answered 413", DEFAULT_MAX_PIXELS))


def run(args, console, errors) -> int:
    return {"export": cmd_export, "predict": cmd_predict, "serve": cmd_serve}[args.command](args, console, errors)


def cmd_export(args, console, errors) -> int:
    from runner.inference.export import ExportError, ExportRequest, VerificationError, export
    from runner.training.checkpoint import CheckpointError

    problem = _export_arguments(args)
    if problem:
        errors.print(f"error: {problem}")
        return EXIT_BAD_INPUT
    request = ExportRequest(root=Path(args.root), db_url=db_url(args), out=Path(args.out), job=args.job,
                            experiment=args.experiment, family=args.family, group=args.group)
    try:
        result = export(request)
    except VerificationError as exc:
        errors.print(f"error: {exc}")
        return EXIT_FAILED
    except (ExportError, CheckpointError) as exc:
        errors.print(f"error: {exc}")
        return EXIT_BAD_INPUT
    console.print(f"exported job {result.job_key} to {result.folder} in {result.seconds:.1f} s: outputs match the "
                  f"trained model within {result.pt2_error:.1e} (pt2) and {result.onnx_error:.1e} (onnx), "
                  f"own-group symmetry error {result.symmetry_error:.1e}")
    return EXIT_OK


def _export_arguments(args) -> str | None:
    if bool(args.job) == bool(args.best):
        return "give either --job ID or --experiment NAME --best"
    if args.best and not args.experiment:
        return "--best needs --experiment NAME (python -m runner status lists the experiments)"
    if args.job and (args.family or args.group or args.experiment):
        return "--experiment, --family and --group select with --best; with --job leave them out"
    return None


def cmd_predict(args, console, errors) -> int:
    from runner.inference.artifact import ArtifactError, load

    if args.batch_size < 1:
        errors.print("error: --batch-size must be >= 1")
        return EXIT_BAD_INPUT
    try:
        model = load(args.artifact, backend=args.backend)
    except ArtifactError as exc:
        errors.print(f"error: {exc}")
        return EXIT_BAD_INPUT
    if args.wsi:
        return _predict_slide(model, args, console, errors)
    return _predict_patches(model, args, console, errors)


def _predict_patches(model, args, console, errors) -> int:
    from runner.inference.predict import predict

    out = Path(args.out or "predictions.csv")
    with _progress(errors) as progress:
        result = predict(model, [Path(p) for p in args.inputs], out, tta=args.tta, batch_size=args.batch_size,
                         progress=progress, max_pixels=args.max_pixels)
    for note in result.notes:
        console.print(note)
    _list_problems(result.problems, errors)
    if not result.predicted:
        errors.print("error: no input could be predicted")
        return EXIT_BAD_INPUT
    rate = result.predicted / max(result.seconds, 1e-9)
    console.print(f"{result.predicted} image(s) predicted in {result.seconds:.1f} s ({rate:,.0f} images/s): {out}")
    return EXIT_FAILED if result.problems else EXIT_OK


def _predict_slide(model, args, console, errors) -> int:
    from runner.inference.slides import SlideError, SlideRequest, predict_slide

    if len(args.inputs) != 1:
        errors.print("error: --wsi takes one slide at a time")
        return EXIT_BAD_INPUT
    slide = Path(args.inputs[0])
    out = Path(args.out or f"{slide.name.split('.')[0]}_heatmap")
    request = SlideRequest(slide=slide, out=out, mpp=args.mpp, stride=args.stride, min_tissue=args.min_tissue,
                           batch_size=args.batch_size, tta=args.tta, max_pixels=args.max_pixels)
    try:
        with _progress(errors) as progress:
            result = predict_slide(model, request, progress=progress)
    except SlideError as exc:
        errors.print(f"error: {exc}")
        return EXIT_BAD_INPUT
    console.print(result.summary)
    return EXIT_OK


def cmd_serve(args, console, errors) -> int:
    from runner.inference.artifact import ArtifactError
    from runner.inference.serve import serve

    try:
        serve(Path(args.artifact), host=args.host, port=args.port, max_upload_bytes=int(args.max_upload_mb * 2**20),
              max_pixels=args.max_pixels)
    except ArtifactError as exc:
        errors.print(f"error: {exc}")
        return EXIT_BAD_INPUT
    return EXIT_OK


def _list_problems(problems, errors) -> None:
    if problems:
        errors.print(f"{len(problems)} input(s) not predicted:")
    for problem in problems:
        errors.print(f"  {problem.source}: {problem.reason}")


class _progress:
    """A rich progress bar on stderr; `progress(total)` gives the advance callback the workers call."""

    def __init__(self, errors) -> None:
        from rich.progress import Progress

        self.bar = Progress(console=errors, transient=True)

    def __enter__(self):
        self.bar.__enter__()

        def start(total: int):
            task = self.bar.add_task("predicting", total=total)
            return lambda n: self.bar.advance(task, n)

        return start

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
