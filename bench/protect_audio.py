"""Audio protection benchmark: efficacy, quality and speed per clip and level, on the AAC-encoded output.

For each clip the first audio track is decoded at its own rate, protected, and written as the product writes it
(AAC at `audio_bitrate`, PyAV); the "protection-off" output is the same encode of the untouched track. Both files
are decoded and scored with Whisper base (faster-whisper, int8: the attacked model) and PocketSphinx (never seen
by the attack). Prints a table, writes bench/results/protect_audio.json.

    python bench/protect_audio.py                       # every clip, weak level
    python bench/protect_audio.py --levels weak,medium,strong --clips jfk
    python bench/protect_audio.py --clips english --set steps=80 --set stop_wer=1.0   # AttackConfig overrides
    python bench/protect_audio.py --clips jfk --reencode aac_64k,opus_48k   # also scored after a second encoding
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from media_cleaner.config import load_settings
from media_cleaner.evaluate.quality import finite, snr_db, worst_window_snr_db
from media_cleaner.evaluate.reencode import decode_native
from media_cleaner.evaluate.speech import encode_aac, load_pcm, speech_efficacy
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.progress import CancelToken
from media_cleaner.protect.audio import AttackConfig, create
from media_cleaner.protect.audio.attack import nothing_heard
from media_cleaner.protect.audio.codec import _lag
from media_cleaner.protect.base import AudioContext

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
COMMAND = {"b": "bin", "l": "lay", "p": "place", "s": "set"}
COLOUR = {"b": "blue", "g": "green", "r": "red", "w": "white"}
PREPOSITION = {"a": "at", "b": "by", "i": "in", "w": "with"}
DIGIT = {"z": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six"}
DIGIT.update({"7": "seven", "8": "eight", "9": "nine"})
ADVERB = {"a": "again", "n": "now", "p": "please", "s": "soon"}


def grid_transcript(name: str) -> str:
    """GRID file names spell the sentence: command colour preposition letter digit adverb."""
    code = name.split("_")[-1].split(".")[0]
    c, col, prep, letter, digit, adv = code[:6]
    return " ".join([COMMAND[c], COLOUR[col], PREPOSITION[prep], letter, DIGIT[digit], ADVERB[adv]])


def clips() -> list[tuple[str, Path, str | None]]:
    audio = DATA / "audio"
    out: list[tuple[str, Path, str | None]] = [
        ("jfk", audio / "jfk.flac", JFK),
        ("LJ002-0020", audio / "LJ002-0020.wav", "In eighteen thirteen"),
        ("english", audio / "english.wav", "one two three"),
        ("common_voice", audio / "common_voice_en_651325.mp3", None),
        ("librispeech_2412", audio / "2412-153948-0001.flac", None),
    ]
    for path in sorted((DATA / "video").glob("grid_*.mpg")):
        out.append((path.stem, path, grid_transcript(path.name)))
    out.append(("bench_720p", DATA / "bench" / "talking_crowd_720p.mp4", JFK))
    out.append(("multilingual_60s", audio / "multilingual.mp3", None))
    return [c for c in out if c[1].is_file()]


def end_to_end_snr(original: np.ndarray, rate: int, path: Path) -> float | None:
    """The delivered file (decoded, aligned) against the original PCM, mono mix at the original rate."""
    decoded = decode_native(path)[0].mean(axis=0)  # our own mean: ffmpeg's mono downmix scales by 1/sqrt(2)
    ref = original.mean(axis=0)
    lag = _lag(ref, decoded, 4096)
    decoded = decoded[lag:] if lag >= 0 else np.pad(decoded, (-lag, 0))
    n = min(ref.shape[0], decoded.shape[0])
    return finite(snr_db(ref[:n], decoded[:n]), 2)


def perceptual(original: np.ndarray, rate: int, path: Path) -> dict[str, float | None]:
    """STOI (pystoi) and wide-band PESQ (pesq) of the delivered file against the original, 16 kHz mono."""
    from scipy.signal import resample_poly

    ref = resample_poly(original.mean(axis=0), 16000, rate).astype(np.float32)
    test = load_pcm(path)
    lag = _lag(ref, test, 4096)
    test = test[lag:] if lag >= 0 else np.pad(test, (-lag, 0))
    n = min(ref.shape[0], test.shape[0])
    out: dict[str, float | None] = {"stoi": None, "pesq_wb": None}
    try:
        from pystoi import stoi

        out["stoi"] = round(float(stoi(ref[:n], test[:n], 16000, extended=False)), 4)
    except Exception:  # noqa: BLE001 - an optional measure must not sink the benchmark
        pass
    try:
        from pesq import pesq

        out["pesq_wb"] = round(float(pesq(16000, ref[:n], test[:n], "wb")), 3)
    except Exception:  # noqa: BLE001
        pass
    return out


def forced_language_wer(plain: Path, protected: Path, settings, reference: str | None) -> float:
    """Whisper WER on the protected file with the language forced to English (part of the attack's effect is the
    language detection pushed away; a service may force it). Reference: as `speech_efficacy` takes it."""
    from media_cleaner.evaluate.speech import wer, whisper_transcribe

    ref = reference if reference is not None else whisper_transcribe(load_pcm(plain), settings, language="en")
    return round(wer(ref, whisper_transcribe(load_pcm(protected), settings, language="en")), 4)


def sliding_worst(original: np.ndarray, protected: np.ndarray, rate: int) -> float | None:
    """Worst perturbation SNR over every 1 s window (hop 0.1 s) with speech, per channel."""
    size, hop = rate, rate // 10
    worst = math.inf
    for c in range(original.shape[0]):
        ref = original[c].astype(np.float64)
        noise = protected[c].astype(np.float64) - ref
        starts = range(0, max(1, ref.shape[0] - size + 1), hop)
        sig = np.array([np.mean(ref[s : s + size] ** 2) for s in starts])
        pn = np.array([np.mean(noise[s : s + size] ** 2) for s in starts])
        active = sig >= sig.max() * 1e-3
        if np.any(active & (pn > 0)):
            worst = min(worst, float(np.min(10 * np.log10(sig[active] / np.maximum(pn[active], 1e-30)))))
    return finite(worst, 2)


def target_outcome(config: AttackConfig, heard: str) -> dict[str, object]:
    """For a targeted objective, whether Whisper's transcript of the protected file is the outcome asked for:
    empty (silence) or the phrase (its WER against the phrase)."""
    from media_cleaner.evaluate.speech import wer

    if config.objective == "silence":
        return {"target_reached": nothing_heard(heard)}
    if config.objective == "phrase":
        miss = round(wer(config.phrase, heard), 4)
        return {"phrase": config.phrase, "whisper_wer_vs_phrase": miss, "target_reached": miss <= config.phrase_wer}
    return {}


def reencode_efficacy(
    plain: Path, protected: Path, names: list[str], settings, efficacy: dict, reference: str | None, cache: dict
) -> dict[str, dict]:
    """Both recognisers' WER on each named re-encoding (evaluate.reencode) of the protection-off and the protected
    file. Reference as `speech_efficacy` takes it: the given one, else each recogniser's own transcript of the
    protection-off file as delivered. `cache` keeps the protection-off transcripts across levels of one clip."""
    from media_cleaner.evaluate.reencode import reencode
    from media_cleaner.evaluate.speech import sphinx_transcribe, wer, whisper_transcribe

    refs = {k: reference if reference is not None else efficacy[k]["original_text"] for k in ("whisper", "unseen")}
    out: dict[str, dict] = {}
    for name in names:
        if name not in cache:
            pcm = reencode(plain, name)
            cache[name] = (whisper_transcribe(pcm, settings), sphinx_transcribe(pcm))
        pcm = reencode(protected, name)
        (w_o, s_o), w_p, s_p = cache[name], whisper_transcribe(pcm, settings), sphinx_transcribe(pcm)
        out[name] = {
            "whisper_wer_original": round(wer(refs["whisper"], w_o), 4),
            "whisper_wer_protected": round(wer(refs["whisper"], w_p), 4),
            "unseen_wer_original": round(wer(refs["unseen"], s_o), 4),
            "unseen_wer_protected": round(wer(refs["unseen"], s_p), 4),
            "whisper_protected_text": w_p,
        }
    return out


def attack_config(overrides: list[str]) -> AttackConfig:
    """AttackConfig with `name=value` overrides (values parsed as JSON, else kept as text), e.g. steps=60."""
    cfg = AttackConfig()
    for item in overrides:
        key, _, text = item.partition("=")
        if key == "steps":  # the protector takes steps per level from `extra`
            cfg.extra.update(dict.fromkeys(("weak", "medium", "strong"), int(text)))
            continue
        current = getattr(cfg, key)  # unknown names fail here
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if isinstance(current, int | float) and value is not None:
            value = type(current)(value)
        elif isinstance(value, list):
            value = tuple(value)
        setattr(cfg, key, value)
    return cfg


def run(
    levels: list[str],
    names: set[str] | None,
    out_path: Path,
    config: AttackConfig | None = None,
    reencodings: list[str] | None = None,
) -> list[dict]:
    settings = load_settings(torch_threads=int(os.environ.get("BENCH_THREADS", "2")))
    protector = create(settings, ModelRegistry(settings), config)
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="bench_audio_"))
    for name, path, reference in clips():
        if names and name not in names:
            continue
        pcm, rate = decode_native(path)
        duration = pcm.shape[1] / rate
        plain = encode_aac(pcm, rate, work / f"{name}_off.m4a", settings.audio_bitrate)
        reencoded_off: dict = {}  # the protection-off file's transcripts per re-encoding, shared by the levels
        for level in levels:
            ctx = AudioContext(
                settings=settings, level=level, sample_rate=rate, channels=pcm.shape[0], cancel=CancelToken()
            )
            protector.prepare(ctx)
            load = os.getloadavg()[0]
            started = time.perf_counter()
            protected = protector.protect_track(pcm, ctx)
            seconds = time.perf_counter() - started
            out_file = encode_aac(protected, rate, work / f"{name}_{level}.m4a", settings.audio_bitrate)
            efficacy = speech_efficacy(plain, out_file, settings, reference)
            forced = forced_language_wer(plain, out_file, settings, reference)
            row = {
                "clip": name,
                "objective": protector.config.objective,
                **target_outcome(protector.config, efficacy["whisper"]["protected_text"]),
                "file": str(path.relative_to(DATA)),
                "duration_s": round(duration, 2),
                "rate": rate,
                "channels": pcm.shape[0],
                "level": level,
                "whisper_wer_original": efficacy["whisper"]["wer_original"],
                "whisper_wer_protected": efficacy["whisper"]["wer_protected"],
                "whisper_protected_text": efficacy["whisper"]["protected_text"],
                "whisper_wer_protected_forced_en": forced,
                "unseen_wer_original": efficacy["unseen"]["wer_original"],
                "unseen_wer_protected": efficacy["unseen"]["wer_protected"],
                "unseen_wer_vs_own_original": efficacy["unseen"]["wer_vs_own_original"],
                "reference": efficacy["whisper"]["reference"],
                "perturbation_snr_db": finite(snr_db(pcm, protected), 2),
                "perturbation_worst_1s_snr_db": finite(worst_window_snr_db(pcm, protected, rate, 1.0), 2),
                "perturbation_worst_sliding_1s_snr_db": sliding_worst(pcm, protected, rate),
                "output_snr_db": end_to_end_snr(pcm, rate, out_file),
                "protection_off_output_snr_db": end_to_end_snr(pcm, rate, plain),
                **perceptual(pcm, rate, out_file),
                "protect_seconds": round(seconds, 2),
                "realtime_factor": round(seconds / duration, 3),
                "load_average_1min": round(load, 2),
                "steps": ctx.stats.get("steps"),
                "steps_run": ctx.stats.get("steps_run"),
                "stopped_at": [g.get("stopped_at") for g in ctx.stats.get("groups", [])],
                "heard_in_loop": [g.get("heard") for g in ctx.stats.get("groups", [])],
                "last_terms": [g.get("last_window_terms") for g in ctx.stats.get("groups", [])],
                "phase_seconds": [g.get("seconds") for g in ctx.stats.get("groups", [])],
                "confirm_redraws": [g.get("redraws") for g in ctx.stats.get("groups", [])],
                "stalled_at": [g.get("stalled_at") for g in ctx.stats.get("groups", [])],
                "efficacy": efficacy,
            }
            if reencodings:
                row["reencode"] = reencode_efficacy(
                    plain, out_file, reencodings, settings, efficacy, reference, reencoded_off
                )
            rows.append(row)
            print(_line(row), flush=True)
            for key, r in row.get("reencode", {}).items():
                print(
                    f"  {key:<12} W {r['whisper_wer_original']:.2f} -> {r['whisper_wer_protected']:.2f}   "
                    f"PS {r['unseen_wer_original']:.2f} -> {r['unseen_wer_protected']:.2f}",
                    flush=True,
                )
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(_document(rows), indent=2))
    return rows


HEADER = (
    f"{'clip':<22}{'level':<8}{'dur':>6}{'W orig':>8}{'W prot':>8}{'PS orig':>8}{'PS prot':>8}"
    f"{'SNR':>7}{'worst':>7}{'out':>7}{'off':>7}{'STOI':>7}{'PESQ':>6}{'RTF':>7}  steps"
)


def _line(r: dict) -> str:
    def f(v, fmt):
        return format(v, fmt) if isinstance(v, int | float) else "-"

    return (
        f"{r['clip'][:21]:<22}{r['level']:<8}{r['duration_s']:>6.1f}{f(r['whisper_wer_original'], '>8.2f')}"
        f"{f(r['whisper_wer_protected'], '>8.2f')}{f(r['unseen_wer_original'], '>8.2f')}"
        f"{f(r['unseen_wer_protected'], '>8.2f')}{f(r['perturbation_snr_db'], '>7.1f')}"
        f"{f(r['perturbation_worst_sliding_1s_snr_db'], '>7.1f')}{f(r['output_snr_db'], '>7.1f')}"
        f"{f(r['protection_off_output_snr_db'], '>7.1f')}{f(r['stoi'], '>7.3f')}{f(r['pesq_wb'], '>6.2f')}"
        f"{f(r['realtime_factor'], '>7.2f')}  {r.get('steps_run')}"
    )


def _document(rows: list[dict]) -> dict:
    summary = {}
    for level in sorted({r["level"] for r in rows}):
        sel = [r for r in rows if r["level"] == level]
        summary[level] = {
            "clips": len(sel),
            "whisper_wer_protected_min": min(r["whisper_wer_protected"] for r in sel),
            "whisper_wer_protected_mean": round(float(np.mean([r["whisper_wer_protected"] for r in sel])), 4),
            "unseen_wer_protected_mean": round(float(np.mean([r["unseen_wer_protected"] for r in sel])), 4),
            "whisper_wer_protected_forced_en_mean": round(
                float(np.mean([r["whisper_wer_protected_forced_en"] for r in sel])), 4
            ),
            "unseen_wer_original_mean": round(float(np.mean([r["unseen_wer_original"] for r in sel])), 4),
            "targets_reached": sum(bool(r.get("target_reached")) for r in sel) if "target_reached" in sel[0] else None,
            "realtime_factor_total": round(
                sum(r["protect_seconds"] for r in sel) / sum(r["duration_s"] for r in sel), 3
            ),
        }
        keys = sorted({k for r in sel for k in r.get("reencode", {})})
        if keys:
            summary[level]["reencode"] = {k: _reencode_summary([r["reencode"][k] for r in sel]) for k in keys}
    return {
        "what": "audio protection on the AAC-encoded output (PyAV, settings.audio_bitrate)",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "summary": summary,
        "rows": rows,
    }


def _reencode_summary(scores: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {"clips": len(scores)}
    for key in ("whisper_wer_original", "whisper_wer_protected", "unseen_wer_original", "unseen_wer_protected"):
        values = [s[key] for s in scores]
        out[f"{key}_mean"], out[f"{key}_min"] = round(float(np.mean(values)), 4), min(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="weak")
    parser.add_argument("--clips", default="", help="comma-separated clip names (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "protect_audio.json"))
    parser.add_argument("--set", action="append", default=[], help="AttackConfig override name=value (repeatable)")
    parser.add_argument("--reencode", default="", help="also score re-encodings, e.g. aac_64k,opus_48k (or 'all')")
    args = parser.parse_args()
    print(HEADER)
    names = set(filter(None, args.clips.split(","))) or None
    reencodings = list(filter(None, args.reencode.split(",")))
    if reencodings:
        from media_cleaner.evaluate.reencode import available

        reencodings = available() if reencodings == ["all"] else reencodings
        if set(reencodings) - set(available()):  # fail before the long protection runs, not after
            parser.error(f"--reencode: unknown or unavailable {sorted(set(reencodings) - set(available()))}")
    rows = run(args.levels.split(","), names, Path(args.out), attack_config(args.set), reencodings)
    print(json.dumps(_document(rows)["summary"], indent=2))


if __name__ == "__main__":
    main()
