"""Python client for axeq-server: accumulator-aware post-training quantization (GPFQ/OPTQ + AXE)
with overflow certificates.

numpy level (needs grpcio, protobuf, numpy): Client (one layer, many layers across replicas,
resume by id), Config, ActivationQuantizer, the certificate verifier and the RESULT/safetensors
files. PyTorch level (the `torch` extra): axeq.pipeline.quantize_model quantizes a model's blocks
through the service; axeq.torch puts results back into a model (QuantLinear, integer datapath);
axeq.llama and axeq.gpt2 are small reference models."""
from .certificate import compute_certificate, verify_certificate, codes_sha256
from .client import Client, LayerResult, QuantizeManyError, ServerError
from .config import ActivationQuantizer, Config
from .safetensors import read_safetensors, write_safetensors
from .result import read_result, write_result, verify_results

__all__ = [
    "Client", "LayerResult", "QuantizeManyError", "ServerError", "Config", "ActivationQuantizer",
    "compute_certificate", "verify_certificate", "codes_sha256", "verify_results", "read_safetensors",
    "write_safetensors", "read_result", "write_result",
]
