"""rcl_interfaces messages for the parameter services, shared by the node tests."""
from __future__ import annotations


def param_value(value):
    """A ParameterValue of the type Python gives ``value`` (bool before int: bool is an int)."""
    from rcl_interfaces.msg import ParameterType, ParameterValue

    pv = ParameterValue()
    if isinstance(value, bool):
        pv.type, pv.bool_value = ParameterType.PARAMETER_BOOL, value
    elif isinstance(value, int):
        pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, value
    elif isinstance(value, float):
        pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, value
    else:
        pv.type, pv.string_value = ParameterType.PARAMETER_STRING, value
    return pv


def param_msg(name: str, value):
    from rcl_interfaces.msg import Parameter

    return Parameter(name=name, value=param_value(value))
