"""Data-parallel training through ``configs/multi_gpu_train.yaml``: the README's torchrun command with two CPU processes
(gloo backend) on a tiny real subset of the embedded images, 1 epoch."""

from __future__ import annotations

import re
import shlex

import torch
from conftest import BUNDLE
from test_zoo import readme_command, run_readme
from torch.distributed.run import get_args_parser

from scripts.engine import build_network, read_bundle_config

SINGLE_NODE = "--nproc_per_node=2 -m monai.bundle run"
MULTI_NODE = "--rdzv_endpoint=HOST:29500"


def test_torchrun_trains_on_two_gloo_processes(tmp_path):
    command = readme_command(SINGLE_NODE).replace("torchrun ", "torchrun --tee 3 ", 1)  # rank-prefixed output
    small = {
        "max_epochs": 1,
        "max_slices_per_volume": 1,
        "patch_size": 32,
        "patches_per_slice": 2,
        "batch_size": 4,
        "val_crop": 64,
        "ckpt_dir": tmp_path / "models",
        "output_dir": tmp_path / "runs",
    }
    result = run_readme(command, *[str(a) for key, value in small.items() for a in (f"--{key}", value)], timeout=600)
    output = result.stdout + result.stderr

    for rank in (0, 1):
        finished = rf"\[default{rank}\]:.*SupervisedTrainer - INFO - Engine run finished"
        assert re.search(finished, output), f"rank {rank} did not finish training:\n{output[-3000:]}"
    assert "Traceback" not in output
    # rank 0 alone saved the best model, as a plain state dict of the bare network (no DistributedDataParallel prefix)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["model.pt"]
    _, inference = read_bundle_config(BUNDLE)
    build_network(inference["network_def"]).load_state_dict(
        torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    )
    # ... and alone wrote TensorBoard events (file names end in <pid>.<n>) and the validation curve
    writers = {path.name.split(".")[-2] for path in (tmp_path / "runs").glob("events.out.tfevents.*")}
    assert len(writers) == 1
    assert (tmp_path / "runs" / "validation_curve.png").is_file()
    # validation metrics are all-gathered: both ranks report the same key metric
    best = re.findall(r"\[default(\d)\]:.*Got new best metric of val_psnr: ([0-9.]+)", output)
    assert {rank for rank, _ in best} == {"0", "1"} and len({value for _, value in best}) == 1


def test_multi_node_command_is_the_single_node_run():
    parser = get_args_parser()
    single = parser.parse_args(shlex.split(readme_command(SINGLE_NODE))[1:])
    multi = parser.parse_args(shlex.split(readme_command(MULTI_NODE))[1:])
    assert single.standalone and not multi.standalone
    assert (multi.nnodes, multi.rdzv_backend, multi.rdzv_endpoint) == ("2", "c10d", "HOST:29500")
    assert multi.rdzv_id and multi.module and single.module
    assert (multi.training_script, multi.training_script_args) == (single.training_script, single.training_script_args)
    assert single.training_script_args[-1] == "['configs/train.yaml','configs/multi_gpu_train.yaml']"
