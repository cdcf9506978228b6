# Sourced by scripts/gpu-check and scripts/gpu-train on a machine with an
# NVIDIA GPU. Sets $bin to the CUDA build of esorisk: the one named by
# $ESORISK_CUDA_BIN, or the one scripts/build-cuda left xz-compressed in
# .gpu/esorisk.xz, unpacked to a temporary directory. cuBLAS, cuRAND and the
# CUDA runtime come from the NVIDIA wheels of a Python environment when they
# are not installed system-wide; libcuda.so.1 is the driver's.
bin=${ESORISK_CUDA_BIN:-}
if [ -z "$bin" ]; then
  bin=$(mktemp -d)/esorisk
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    .gpu/esorisk.xz "$bin"
  chmod +x "$bin"
fi
if nv=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null); then
  for d in "$nv"/nvidia/cu13/lib "$nv"/nvidia/*/lib; do
    if [ -d "$d" ]; then LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; fi
  done
  export LD_LIBRARY_PATH
fi
