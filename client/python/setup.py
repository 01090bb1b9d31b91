"""Build hook for `pip install client/python`: generates the axeq.v1 gRPC stubs from axeq.proto
with protoc and grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc; the
python3-grpc-tools protoc is too old) into the build tree, so a source checkout needs no
generated files. The sdist ships axeq.proto under proto/ and builds the same way. Metadata lives
in pyproject.toml."""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join("axeq", "v1", "axeq.proto")


def proto_root() -> str:
    """The folder holding axeq/v1/axeq.proto: proto/ in an sdist, the repository's proto/ in a checkout."""
    for root in (os.path.join(HERE, "proto"), os.path.join(HERE, "..", "..", "proto")):
        if os.path.exists(os.path.join(root, PROTO)):
            return os.path.abspath(root)
    raise SystemExit(f"{PROTO} not found in {HERE}/proto or the repository's proto/")


def generate(out: str):
    """Writes axeq/v1/axeq_pb2.py, axeq_pb2_grpc.py and __init__.py under out."""
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    if not protoc or not os.path.exists(plugin):
        raise SystemExit("building axeq needs protoc and grpc_python_plugin: "
                         "apt-get install protobuf-compiler protobuf-compiler-grpc")
    os.makedirs(os.path.join(out, "axeq", "v1"), exist_ok=True)
    subprocess.run([protoc, f"--proto_path={proto_root()}", f"--python_out={out}", f"--grpc_python_out={out}",
                    f"--plugin=protoc-gen-grpc_python={plugin}", PROTO], check=True)
    open(os.path.join(out, "axeq", "v1", "__init__.py"), "a").close()


class BuildPy(build_py):
    def run(self):
        super().run()
        if not self.dry_run:
            generate(self.build_lib)


class SDist(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        dst = os.path.join(base_dir, "proto", "axeq", "v1")
        os.makedirs(dst, exist_ok=True)
        shutil.copy(os.path.join(proto_root(), PROTO), dst)


setup(cmdclass={"build_py": BuildPy, "sdist": SDist})
