"""TEST STAND-IN for ``slicer.parameterNodeWrapper`` (NOT 3D Slicer): typed attributes stored in the parameter node,
defaults from the class body (unspecified: ``None`` for nodes, the type's empty value otherwise), and the checks
Slicer's serializers add to every field: numbers, strings, booleans, paths and enums must not be None and must have
their type (``int`` for an ``int`` field; ``int`` or ``float`` for a ``float`` one) — TypeError/ValueError as in
Slicer's ``validators.py`` — before the declared validators run."""

import enum
import pathlib
import typing


class Choice:
    def __init__(self, choices) -> None:
        self.choices = list(choices)

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class WithinRange:
    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class _TypeCheck:
    def __init__(self, datatype, node: bool) -> None:
        self.types = (int, float) if datatype is float else datatype
        self.node = node

    def validate(self, value) -> None:
        if value is None:
            if self.node:
                return
            raise ValueError("Value must not be None")
        if not isinstance(value, self.types) or (self.types is int and isinstance(value, bool)):
            raise TypeError(f"Value must be of type '{self.types}', is type '{type(value)}' value '{value}'")


def _is_node(datatype) -> bool:
    return isinstance(datatype, type) and datatype.__module__.startswith("slicer")


def _unspecified_default(datatype):
    if isinstance(datatype, type) and issubclass(datatype, enum.Enum):
        return next(iter(datatype))
    if _is_node(datatype):
        return None  # an MRML node reference
    return datatype()  # pathlib.Path() is "." — what a bound path widget then shows


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)

    def field(name, datatype):
        validators = list(getattr(datatype, "__metadata__", ()))
        base = typing.get_args(datatype)[0] if validators else datatype
        if not (_is_node(base) or base in (int, float, str, bool) or issubclass(base, (enum.Enum, pathlib.PurePath))):
            raise TypeError(f"{name}: the stand-in has no serializer for {base}")
        validators.insert(0, _TypeCheck(base, _is_node(base)))
        default = cls.__dict__.get(name, _unspecified_default(base))
        for validator in validators:
            validator.validate(default)

        def get(self):
            return self.parameterNode.parameters.get(name, default)

        def set(self, value):
            for validator in validators:
                validator.validate(value)
            self.parameterNode.parameters[name] = value
            for tag, callback in list(self.parameterNode.observers.items()):  # ModifiedEvent, as in Slicer
                if tag in self.parameterNode.observers:
                    callback(self, 33)

        return property(get, set)

    def init(self, parameterNode) -> None:
        self.parameterNode = parameterNode

    def connectGui(self, gui):
        """Slicer binds each widget whose SlicerParameterName is a field; the stand-in checks the names and, as
        Slicer's enum connector, fills a combo box bound to an enum with each member's ``label()`` (or name)."""
        for widget in vars(gui).values():
            name = widget._props.get("SlicerParameterName")
            if name is None:
                continue
            if name not in hints:
                raise AttributeError(f"{widget.name} is bound to {name!r}, which is no parameter")
            datatype = hints[name]
            if isinstance(datatype, type) and issubclass(datatype, enum.Enum) and widget._cls == "QComboBox":
                if not widget._items:
                    widget.addItems([getattr(datatype, "label", lambda member: member.name)(m) for m in datatype])
                widget.setCurrentIndex(list(datatype).index(getattr(self, name)))
        return object()

    namespace = {name: field(name, datatype) for name, datatype in hints.items()}
    namespace["__init__"] = init
    namespace["connectGui"] = connectGui
    namespace["AddObserver"] = lambda self, event, callback: self.parameterNode.AddObserver(event, callback)
    namespace["RemoveObserver"] = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    namespace["disconnectGui"] = lambda self, tag: None
    namespace["__doc__"] = cls.__doc__
    return type(cls.__name__, (), namespace)
