# Sourced by the multi-host tests: `cluster_up N` brings up hosts h1..hN with $cluster (exits 77,
# saying why, where network namespaces cannot be made) and takes them down, with $tmp, on exit.
cluster_up() {
  local rc
  set +e
  "$cluster" up "$1" >"$tmp/up.log" 2>&1
  rc=$?
  set -e
  if [ $rc -eq 77 ]; then
    echo "SKIP: $(cat "$tmp/up.log")"; rm -rf "$tmp"; exit 77
  fi
  [ $rc -eq 0 ] || { cat "$tmp/up.log"; exit 1; }
  trap '"$cluster" down; rm -rf "$tmp"' EXIT
}
