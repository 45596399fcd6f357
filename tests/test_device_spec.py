"""Device placement: the encoders' ``--device``, the LLM's ``--llm-device`` / ``--gpu-layers``, and the
per-component form; a request no engine could read is refused before anything loads."""

from __future__ import annotations

import pytest

from edgebridge.device_spec import DevicePlacement, parse_placement
from edgebridge.errors import InputError
from edgebridge.runtimes.llamacpp.devices import check_request, choose_device


@pytest.mark.parametrize("device, llm_device, want", [
    (None, None, DevicePlacement("CPU", "CPU")),
    ("gpu", None, DevicePlacement("GPU", "CPU")),  # the encoders only, as before
    ("CPU", "gpu", DevicePlacement("CPU", "GPU")),
    ("encoder=GPU,llm=GPU", None, DevicePlacement("GPU", "GPU")),
    (" llm = auto ", None, DevicePlacement("CPU", "AUTO")),
    ("encoder=NPU", "GPU", DevicePlacement("NPU", "GPU")),
    ("llm=GPU", "gpu", DevicePlacement("CPU", "GPU")),
])
def test_placements(device, llm_device, want):
    assert parse_placement(device, llm_device) == want


@pytest.mark.parametrize("device, llm_device, words", [
    ("vision=GPU", None, "cannot read the device part 'vision=GPU'"),
    ("encoder=", None, "cannot read"),
    ("llm=GPU,llm=CPU", None, "'llm' is given twice"),
    ("llm=GPU", "CPU", "given twice and differently"),
])
def test_unreadable_placements_are_refused(device, llm_device, words):
    with pytest.raises(InputError, match=words):
        parse_placement(device, llm_device)


@pytest.mark.parametrize("layers, want", [(None, None), ("all", None), (" ALL ", None), (0, 0), ("12", 12), (3, 3)])
def test_gpu_layers(layers, want):
    assert check_request("gpu", layers) == ("GPU", want)


@pytest.mark.parametrize("device, layers", [("NPU", None), ("TPU", None), ("GPU", -1), ("GPU", "half"),
                                            ("GPU", 1.5), ("GPU", True)])
def test_bad_llm_requests_are_refused(device, layers):
    with pytest.raises(InputError):
        check_request(device, layers)


def test_cpu_request_hands_llamacpp_an_empty_device_list():
    """A NULL list would let llama.cpp use every GPU it registered; CPU means an empty one."""
    choice = choose_device("CPU", "all")
    assert choice.device is None and choice.gpu_layers == 0 and choice.executed == "CPU"
    assert list(choice.devices_array()) == [None]
