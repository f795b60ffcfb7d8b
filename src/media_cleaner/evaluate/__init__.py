"""Evaluation: quality (PSNR, SSIM, SNR) of protected vs original, and efficacy (faces, speech) where available."""

from media_cleaner.evaluate.quality import compare_videos, psnr, snr_db, ssim, worst_window_snr_db

__all__ = ["compare_videos", "psnr", "snr_db", "ssim", "worst_window_snr_db"]
