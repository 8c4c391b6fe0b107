"""One prepared run for a lent GPU: throughput and memory, time to 90 %, fastai side by side, fast paths.

    make gpu-data                          # here, once: the WebP archive, 300 JPEGs and wheels into .gpu-data/
    bash benchmarks/gpu.sh                 # on the device machine (carry .gpu-data): installs, runs this, < 8 min
    python -m benchmarks.gpu --smoke       # on a CPU in seconds: every section end to end on tiny settings
    python -m benchmarks.gpu --sections env throughput --budget 300 --out /tmp/gpu

Data: imagenette2-128-webp (every Imagenette image at a short side of 128 px, WebP), extracted by the suite's
own ``prepare_data`` into ``--scratch`` and cached presized (``cache=True``): figures are "Imagenette at 128 px
source resolution". Sections, in this order (each in its own try/except: a failure is recorded under
``errors`` and the run goes on; a section that no longer fits the ``--budget`` is listed under ``skipped``):

- ``env``: GPU name, driver, torch / CUDA / cuDNN / torchvision / lightning versions, Pillow's WebP support, and
  whether the training transform queues without a host sync (``torch.cuda.set_sync_debug_mode("error")``).
- ``throughput``: ``--arch`` (xresnet50) training images/s at each of ``--sizes`` (128, 224), batch ``--bs``,
  bf16 autocast + channels_last, eager: ``model_only`` (random tensors on the device: forward, label-smoothed
  cross entropy, backward, fused AdamW), ``e2e_workers`` (ImagenetteDataModule with cache=True, DataLoader
  workers, the on-device Augment, ImagenetteClassifier, a Lightning Trainer with precision="bf16-mixed") and
  ``e2e_device`` (the same with both cached splits held whole on the GPU: no workers, no copies); ratios
  end-to-end / model-only; peak ``torch.cuda.max_memory_allocated`` (GiB) of each.
- ``time_to_90``: from scratch until validation accuracy on the whole val split reaches ``--t90-target``
  (default recipe below), wall seconds of training + validation up to that epoch (Trainer start-up
  included, the one-time cache build not); the best accuracy and per-epoch history otherwise.
- ``fastai``: fastai's Learner (same architecture, DataBlock with ``Resize(128)`` + ``aug_transforms``, bf16,
  channels_last) images/s at each size, if fastai imports; ``ours_vs_fastai`` against ``e2e_workers``.
- ``compiled``: the throughput section's model-only and best end-to-end settings with ``torch.compile``
  (compile seconds apart).
- ``fast_paths``: ``benchmarks.fast_paths`` on the device (fp32 / channels_last / bf16, AdamW kernels) and
  PIL vs nvJPEG decoding of the 300 real JPEGs of imagenette2-160-mini.

Time-to-90 recipe: ``configs/gpu_time_to_90.yaml`` (``--t90-config``; its figures: docs/results.md), run
through the CLI's own parsing (xresnet50, 96 px for epochs 0-15 then 128 px, presize and validation at 160 px,
batch 256, fastai Adam + one-cycle at 8e-3 over 40 epochs, label smoothing 0.1, Augment(min_scale=0.35)), stopped
at the first epoch with val accuracy >= ``--t90-target``. Every figure is printed (flushed) as it is measured,
``OUT/gpu.json`` is rewritten after each section (so a timeout still leaves figures), and the last line is one
JSON object.
"""
