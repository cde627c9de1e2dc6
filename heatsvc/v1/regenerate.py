"""Regenerate the committed gRPC code of heatsvc.v1 from proto/ (run from the repository root).

    python -m heatsvc.v1.regenerate

The proto's package path (heatsvc/v1) matches this package, so the generated imports
(`from heatsvc.v1 import heatmap_service_pb2`) work as they are.
"""
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO = "proto/heatsvc/v1/heatmap_service.proto"


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    include = resources.files("grpc_tools").joinpath("_proto")
    return protoc.main(["protoc", f"-I{root / 'proto'}", f"-I{include}", f"--python_out={root}",
                        f"--grpc_python_out={root}", f"--pyi_out={root}", str(root / PROTO)])


if __name__ == "__main__":
    sys.exit(main())
