# Sourced by the tests that start several mpirun jobs at once. Open MPI 4.1 keeps the session
# directories of all jobs under /tmp/ompi.HOST.UID, made by the first job and removed by the last,
# and jobs that start at the same moment race there ("mkdir ... File exists": orte_init fails).
# Each ctest entry has a directory of its own (tests/CMakeLists.txt); own_mpi_session gives one to
# the jobs started by this (sub)shell, for jobs side by side within one entry (short, for the
# sockets inside it), removed when the (sub)shell exits.
own_mpi_session() {
  OMPI_MCA_orte_tmpdir_base=$(mktemp -d /tmp/dck-ompi.XXXXXX)
  export OMPI_MCA_orte_tmpdir_base
  trap 'rm -rf "$OMPI_MCA_orte_tmpdir_base"' EXIT
}
