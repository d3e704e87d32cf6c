"""TEST STAND-IN for ``slicer.parameterNodeWrapper`` (NOT 3D Slicer): typed attributes stored in the parameter node,
defaults from the class body (unspecified: ``None`` for nodes, the type's empty value otherwise), validators kept."""

import enum
import typing


class Choice:
    def __init__(self, choices) -> None:
        self.choices = list(choices)

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"{value!r} is not one of {self.choices}")


class WithinRange:
    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"{value} is not within [{self.minimum}, {self.maximum}]")


def _unspecified_default(datatype):
    if isinstance(datatype, type) and issubclass(datatype, enum.Enum):
        return next(iter(datatype))
    if isinstance(datatype, type) and datatype.__module__.startswith("slicer"):
        return None  # an MRML node reference
    return datatype()


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)

    def field(name, datatype):
        validators = list(getattr(datatype, "__metadata__", ()))
        base = typing.get_args(datatype)[0] if validators else datatype
        default = cls.__dict__.get(name, _unspecified_default(base))

        def get(self):
            return self.parameterNode.parameters.get(name, default)

        def set(self, value):
            for validator in validators:
                validator.validate(value)
            self.parameterNode.parameters[name] = value

        return property(get, set)

    def init(self, parameterNode) -> None:
        self.parameterNode = parameterNode

    namespace = {name: field(name, datatype) for name, datatype in hints.items()}
    namespace["__init__"] = init
    namespace["__doc__"] = cls.__doc__
    return type(cls.__name__, (), namespace)
