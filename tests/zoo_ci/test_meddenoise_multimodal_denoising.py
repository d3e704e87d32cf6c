"""The bundle's Model Zoo unit test, in the form of the zoo's ``ci/unit_tests/test_<bundle>.py``.

Copied into the zoo's ``ci/unit_tests/``, its runner (``python ci/unit_tests/runner.py -b
meddenoise_multimodal_denoising``, from the zoo's root) finds it by name and runs it against
``models/meddenoise_multimodal_denoising``; here pytest runs it against ``bundle/`` (or ``$MEDDENOISE_BUNDLE_ROOT``).
Each workflow is created as the zoo's tests create theirs, checked with MONAI's ``check_properties``, run and
finalized: one short training epoch, the evaluation of its checkpoint, and inference, all on real images that the
bundle's required packages embed (pydicom-data, pydicom, nilearn), so nothing is downloaded.
"""

import os
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

from monai.bundle import ConfigWorkflow
from pydicom.data import get_testdata_file

ZOO_BUNDLE_ROOT = "models/meddenoise_multimodal_denoising"
BUNDLE_ROOT = os.environ.get("MEDDENOISE_BUNDLE_ROOT") or (
    ZOO_BUNDLE_ROOT if os.path.isdir(ZOO_BUNDLE_ROOT) else str(Path(__file__).resolve().parents[2] / "bundle")
)
# check_properties builds the workflows before MONAI's run puts the bundle on sys.path; its scripts package must import
sys.path.insert(0, os.path.abspath(BUNDLE_ROOT))
SMALL_TRAINING = {
    "max_epochs": 1,
    "max_slices_per_volume": 1,
    "patch_size": 32,
    "patches_per_slice": 2,
    "val_crop": 64,
    "val_settings": ["gaussian:factor=0.1,mean=0,std=1"],
}


def test_order(test_name1, test_name2):
    """Train first: evaluation reads the checkpoint training writes."""

    def get_order(name):
        return next((i for i, step in enumerate(("train", "eval", "infer")) if step in name), 3)

    return get_order(test_name1) - get_order(test_name2)


test_order.__test__ = False  # the zoo's runner calls it to sort; pytest must not collect it


def run_workflow(config_files, workflow_type, **override):
    """Create, check, run and finalize a workflow of the bundle; returns it."""
    configs = [os.path.join(BUNDLE_ROOT, "configs", name) for name in config_files]
    workflow = ConfigWorkflow(
        config_file=configs if len(configs) > 1 else configs[0],
        meta_file=os.path.join(BUNDLE_ROOT, "configs", "metadata.json"),
        logging_file=os.path.join(BUNDLE_ROOT, "configs", "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=BUNDLE_ROOT,
        **override,
    )
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise ValueError(f"check properties for workflow failed: {missing}")
    workflow.run()
    workflow.finalize()
    return workflow


class TestMedDenoiseMultimodalDenoising(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.output_dir = tempfile.mkdtemp()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.output_dir)

    def test_train_eval_config(self):
        ckpt_dir = os.path.join(self.output_dir, "models")
        override = {**SMALL_TRAINING, "ckpt_dir": ckpt_dir, "output_dir": os.path.join(self.output_dir, "runs")}
        trainer = run_workflow(["train.yaml"], "train", **override)
        self.assertEqual(trainer.parser.get_parsed_content("train#trainer").state.epoch, 1)
        self.assertTrue(os.path.isfile(os.path.join(ckpt_dir, "model.pt")))

        # the zoo runs evaluation as train.yaml overridden, so as a "train" workflow
        eval_dir = os.path.join(self.output_dir, "eval")
        settings = ["gaussian:factor=0.1,mean=0,std=1"]
        run_workflow(
            ["train.yaml", "evaluate.yaml"], "train", **override, eval_output_dir=eval_dir, eval_settings=settings
        )
        self.assertTrue(os.path.isfile(os.path.join(eval_dir, "evaluation.json")))

    def test_infer_config(self):
        dataset_dir, output_dir = (os.path.join(self.output_dir, name) for name in ("images", "inference"))
        os.makedirs(dataset_dir)
        for name in ("CT_small.dcm", "MR_small.dcm"):  # real 128x128 CT and 64x64 MR slices
            shutil.copy(get_testdata_file(name), dataset_dir)
        override = {"dataset_dir": dataset_dir, "output_dir": output_dir, "device": "$torch.device('cpu')"}
        run_workflow(["inference.json"], "inference", **override)
        written = sorted(path.name for path in Path(output_dir).rglob("*.nii.gz"))
        self.assertEqual(written, ["CT_small_denoised.nii.gz", "MR_small_denoised.nii.gz"])


if __name__ == "__main__":
    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = test_order
    unittest.main(testLoader=loader)
