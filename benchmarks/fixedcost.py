"""A big model on a few files: what a whole prediction job costs when the work is small.

    python -m benchmarks.fixedcost [--photos 45] [--arch vgg16]
        [--json benchmarks/results/fixedcost_cpu.json]

The tutorial's lesson saves vgg16 with its head replaced (``classifier[6] = Linear(4096, 10)``,
``torch.save(vgg16.state_dict(), "vgg16_method2.pth")``): this saves that state_dict (random
weights: what it computes costs the same), writes --photos camera-sized JPEGs (1024x768), and
times, as a user types them, with a fresh cache (no precision timings from an earlier run):
  job    python -m jobs.predict --model FILE --arch vgg16 --input PHOTOS --output OUT
         (--precision auto: measuring it must cost no more than the work), the whole process;
  loop   the tutorial's test.py, one photo at a time through the same model (Resize((224, 224)),
         ToTensor, model(x)), in this process, after the model is built.
Prints both, the job's precision choice and why, and the job's time less the loop's.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    describe,
    job_env,
    machine,
    parser,
    run_module,
    write_json,
    write_photos,
)


def tutorial_loop(model_file: Path, photos: list[Path], arch: str) -> float:
    """Seconds the tutorial's test.py takes for ``photos``, one at a time (model built first)."""
    import torch
    import torchvision
    from PIL import Image

    model = getattr(torchvision.models, arch)()
    model.classifier[6] = torch.nn.Linear(4096, 10)
    model.load_state_dict(torch.load(model_file, weights_only=True))
    model.eval()
    tf = torchvision.transforms.Compose(
        [torchvision.transforms.Resize((224, 224)), torchvision.transforms.ToTensor()]
    )
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in photos:
            model(torch.reshape(tf(Image.open(p).convert("RGB")), (1, 3, 224, 224))).argmax(1)
    return time.perf_counter() - t0


def main() -> None:
    p = parser(__doc__, "fixedcost_cpu.json")
    p.add_argument("--photos", type=int, default=45)
    p.add_argument("--arch", default="vgg16", help="a torchvision VGG (its classifier[6] replaced)")
    a = p.parse_args()
    import torch
    import torchvision

    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = getattr(torchvision.models, a.arch)()
        model.classifier[6] = torch.nn.Linear(4096, 10)
        model_file = work / f"{a.arch}_method2.pth"
        torch.save(model.state_dict(), model_file)
        write_photos(work / "photos", a.photos)
        env = job_env(CIFAR_RAY_CACHE=str(work / "cache"))  # nothing measured before
        args = ("--model", model_file, "--arch", a.arch, "--input", work / "photos")
        _, job_s = run_module("jobs.predict", *args, "--output", work / "out", env=env)
        summary = json.loads((work / "out" / "_summary.json").read_text())
        loop_s = tutorial_loop(model_file, sorted((work / "photos").glob("*.jpg")), a.arch)
    compute = summary.get("compute", {})
    results = {
        "photos": a.photos,
        "arch": a.arch,
        "job_process_s": round(job_s, 1),
        "job_ray_start_s": summary.get("ray_start_seconds"),
        "job_pipeline_s": summary.get("seconds"),
        "job_compute": compute,
        "tutorial_loop_s": round(loop_s, 1),
    }
    how = f"precision {compute.get('precision')} ({compute.get('chosen_by')})"
    ray_s = round(summary.get("ray_start_seconds") or 0, 1)
    print(f"[fixedcost] {describe(info)}: {a.photos} photos (1024x768 JPEGs) through {a.arch}")
    print(f"  the whole job (python -m jobs.predict): {job_s:6.1f} s  {how}")
    print(f"  the tutorial's test.py loop:             {loop_s:6.1f} s  (model built before)")
    print(f"  the job less the loop:                   {job_s - loop_s:6.1f} s  (Ray: {ray_s} s)")
    write_json(a.json, info, results)


if __name__ == "__main__":
    main()
