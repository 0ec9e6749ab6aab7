#!/usr/bin/env bash
# The main job: 4-rank data-parallel training with checkpoints, resumed on 2 ranks, inspected.
source "$(dirname "$0")/common.sh"
setup
build
BIN=$BUILD_DIR
CKPT=${CKPT:-$DISTCKPT_ROOT/demo-checkpoints}
rm -rf "$CKPT"

say "1. Training an MLP on 4 MPI ranks for 20 steps, checkpointing every 5 steps into $CKPT"
echo "   Every rank computes gradients for its quarter of each batch; the gradients are summed"
echo "   over MPI. At each checkpoint every rank writes about a quarter of the bytes into its"
echo "   own HDF5 file, and rank 0 commits a manifest that indexes them."
mpirun --oversubscribe -np 4 "$BIN/distckpt-train" --ckpt-dir "$CKPT" --steps 20 --save-every 5 \
  --optimizer adam | tee "$CKPT.log"

say "2. The job 'loses' two nodes: resuming the same run on 2 ranks up to step 30"
echo "   The newest checkpoint (step 20) is re-sharded onto 2 ranks: each reads only the byte"
echo "   ranges it needs and checks them against the xxHash3 checksums before training goes on."
mpirun --oversubscribe -np 2 "$BIN/distckpt-train" --ckpt-dir "$CKPT" --steps 30 --save-every 5 \
  --optimizer adam --resume

say "3. distckpt ls: every checkpoint with its step, epoch, loss, size and saving world size"
"$BIN/distckpt" ls "$CKPT"

say "4. distckpt inspect: the tree of the newest checkpoint (first lines)"
"$BIN/distckpt" inspect "$CKPT/step-00000030" >"$CKPT/inspect.txt"
head -n 18 "$CKPT/inspect.txt"; echo "   ... (full listing in $CKPT/inspect.txt)"

say "5. distckpt verify: read every byte back and check every checksum"
"$BIN/distckpt" verify "$CKPT/step-00000030"
"$BIN/distckpt" verify "$CKPT/step-00000020"

say "6. distckpt export: one .pt file that Python's torch.load reads (weights_only, the default)"
"$BIN/distckpt" export "$CKPT/step-00000030" "$CKPT/step-30.pt"
"$PYTHON" - "$CKPT/step-30.pt" <<'PY'
import sys, torch
ck = torch.load(sys.argv[1])
print("   keys:", sorted(ck))
print("   epoch", ck["epoch"], "loss", round(ck["loss"], 6), "| fc1.weight", tuple(ck["model_state_dict"]["fc1.weight"].shape),
      "| Adam step", ck["optimizer_state_dict"]["state"][0]["step"].item())
PY

say "7. Any tensor, packed or not, with h5py and numpy alone (tools/read_distckpt.py)"
"$PYTHON" "$DISTCKPT_ROOT/tools/read_distckpt.py" "$CKPT/step-00000030" model_state_dict/fc1.weight

say "Done. Checkpoints are in $CKPT. Read any tensor with h5py and numpy alone:"
echo "   python3 $DISTCKPT_ROOT/tools/read_distckpt.py $CKPT/step-00000030 model_state_dict/fc1.weight"
