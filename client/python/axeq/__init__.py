"""Python client for axeq-server: accumulator-aware post-training quantization (GPFQ/OPTQ + AXE)
with overflow certificates. numpy-level API; see axeq.torch for the PyTorch helper."""
from .certificate import compute_certificate, verify_certificate, codes_sha256
from .client import Client, LayerResult, ServerError
from .config import ActivationQuantizer, Config
from .safetensors import read_safetensors, write_safetensors
from .result import read_result, write_result, verify_results

__all__ = [
    "Client", "LayerResult", "ServerError", "Config", "ActivationQuantizer", "compute_certificate",
    "verify_certificate", "codes_sha256", "verify_results", "read_safetensors", "write_safetensors", "read_result",
    "write_result",
]
