"""Each fast-path switch against the default, in images/s: memory layout, bf16, torch.compile, AdamW kernel, decoding.

    python -m benchmarks.fast_paths [--arch xresnet18 --size 64 --bs 64 --steps 10 --warmup 3 --device cpu]
    python -m benchmarks.fast_paths --only compile --compile-sizes 48 64
    python -m benchmarks.fast_paths --only decode --images 500 --presize 128
    python -m benchmarks.fast_paths --device cuda --arch xresnet50 --size 128 --bs 256

Training step: forward, cross entropy, backward and an AdamW step (fastai's hyperparameters, as
``imagenette_sota.schedule.adam``) on random tensors of the given shape, a fresh model per variant, timed
over ``--steps`` steps after ``--warmup`` steps. ``baseline`` is fp32, contiguous (NCHW), the fused AdamW kernel;
each other variant changes one switch (``channels_last+bf16`` two). The suite's defaults follow these figures:
channels_last (it won on the CPU and is the tensor-core layout), fused AdamW, fp32 on the CPU, no compile on the CPU.

- ``channels_last``: NHWC model and inputs; ``bf16``: ``torch.autocast`` in bfloat16;
- ``adamw_foreach`` / ``adamw_single``: the multi-tensor / per-tensor AdamW instead of the fused kernel (each
  variant also reports ``opt_ms``, the optimizer step alone, and the baseline its own);
- ``compile`` (``--only compile`` or by default): ``model.compile()`` as ``ImagenetteClassifier(compile=True)``
  does (on CUDA with channels_last + bf16, on a CPU the baseline's fp32 NCHW): the first step's wall time
  (``compile_s``), images/s after warm-up, then each size of a progressive schedule (``--compile-sizes``)
  warmed up once and the sizes alternated step by step: ``graphs_in_warmup`` counts the graphs dynamo built
  (one per size, the first included), ``graphs_after_warmup`` (new graphs) and ``frames_after_warmup`` (cache
  misses) should be 0, and ``slowest_step_vs_median`` near 1 (it is noisy on a busy machine).

Decoding (``--images`` real JPEGs of imagenette2-160, spread over the classes): the suite's path
(``dataset.open_rgb`` + ``dataset.presize``, PIL, centre crop) vs ``torchvision.io.read_file`` +
``decode_jpeg`` on the whole list at once (on ``--device``: nvJPEG on CUDA) + centre crop +
``torchvision.transforms.v2.functional.resize`` (bilinear, antialias), both to ``--presize`` px uint8, reading
the files included; ``torchvision_decode_only_ips`` is read_file + decode_jpeg alone. Last line: one JSON object.
"""

# What benchmarks.gpu runs on the device, as fast_paths.*.
from benchmarks.fast_paths.decode import decode_compare, jpeg_files
from benchmarks.fast_paths.device import peak_gib, reset_peak, sync
from benchmarks.fast_paths.train import VARIANTS, batch, build, optimizer, time_steps, train_variants

__all__ = [
    "VARIANTS",
    "batch",
    "build",
    "decode_compare",
    "jpeg_files",
    "optimizer",
    "peak_gib",
    "reset_peak",
    "sync",
    "time_steps",
    "train_variants",
]
