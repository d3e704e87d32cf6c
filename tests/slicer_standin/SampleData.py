"""TEST STAND-IN for Slicer's ``SampleData`` module (NOT 3D Slicer): nothing is downloaded; a test registers a local
image file per sample name in ``files``, and ``downloadSample`` loads it as a volume node with a display node."""

import numpy as np
import SimpleITK as sitk
import slicer

files = {}


class SampleDataLogic:
    @staticmethod
    def registerCustomSampleDataSource(category, sampleName, uris, fileNames, nodeNames=None, thumbnailFileName=None,
                                       loadFileType="VolumeFile", customDownloader=None, checksums=None):  # fmt: skip
        files.setdefault(sampleName, None)


def downloadSample(sampleName):
    if files.get(sampleName) is None:
        raise RuntimeError(f"the stand-in has no file for sample {sampleName!r}; a test registers one")
    image = sitk.ReadImage(str(files[sampleName]))
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", sampleName)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.ijk_to_ras = np.diag([*image.GetSpacing(), 1.0])
    node.CreateDefaultDisplayNodes()
    return node
