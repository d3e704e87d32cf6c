"""TEST STAND-IN for ``vtk`` (NOT VTK): the 4x4 matrix and command ids the MedDenoise module uses."""

import numpy as np


class vtkCommand:
    ModifiedEvent = 33


class vtkMatrix4x4:
    def __init__(self) -> None:
        self.elements = np.eye(4)

    def GetElement(self, row: int, column: int) -> float:
        return float(self.elements[row, column])

    def SetElement(self, row: int, column: int, value: float) -> None:
        self.elements[row, column] = value

    def DeepCopy(self, other: "vtkMatrix4x4") -> None:
        self.elements = other.elements.copy()
