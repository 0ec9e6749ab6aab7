// distckpt._C: the C++ engine for Python, over the pybind11 that torch ships. Tensors pass
// without copies (LibTorch is the Python torch's own). The nested dicts users save are
// flattened and rebuilt in python/distckpt/__init__.py; here the calls take flat entries:
//   entries: [(path, tensor, kind, global_shape, offset)], kind "replicated" | "rows" | "flat"
//   scalars: {path: int | float | bool | str | [int] | [float] | [str]}
// Long calls release the GIL; errors become distckpt.Error(message, code) on every rank alike.
#include <mpi.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with casters for tensors

#include <cstdlib>
#include <memory>
#include <string>

#include "distckpt/async.h"
#include "distckpt/checkpoint.h"
#include "distckpt/export.h"
#include "distckpt/manifest_io.h"
#include "distckpt/safetensors.h"
#include "torch_communicator.h"

namespace py = pybind11;
using distckpt::ScalarValue;
using distckpt::StateTree;

namespace {

// Under mpirun, MPI is started here (with thread support, for async saves) unless the script
// did it (e.g. through mpi4py), and finalised at exit when it was started here.
void EnsureMpi() {
  int ready = 0;
  MPI_Initialized(&ready);
  const bool launched =
      std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
  if (ready || !launched) return;
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  py::module_::import("atexit").attr("register")(py::cpp_function([] {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }));
}

ScalarValue ToScalar(const std::string& path, const py::handle& v) {
  if (py::isinstance<py::bool_>(v)) return v.cast<bool>();
  if (py::isinstance<py::int_>(v)) return v.cast<int64_t>();
  if (py::isinstance<py::float_>(v)) return v.cast<double>();
  if (py::isinstance<py::str>(v)) return v.cast<std::string>();
  if (py::isinstance<py::list>(v)) {
    py::list items = v.cast<py::list>();
    if (items.empty() || py::isinstance<py::int_>(items[0])) return v.cast<std::vector<int64_t>>();
    if (py::isinstance<py::float_>(items[0])) return v.cast<std::vector<double>>();
    return v.cast<std::vector<std::string>>();
  }
  throw distckpt::Error(distckpt::InvalidArgument("'" + path + "': unsupported scalar type " +
                                                  std::string(py::str(py::type::of(v)))));
}

py::object FromScalar(const ScalarValue& v) {
  return std::visit([](const auto& x) -> py::object { return py::cast(x); }, v);
}

StateTree MakeTree(const py::list& entries, const py::dict& scalars) {
  StateTree tree;
  for (const py::handle& item : entries) {
    auto [path, tensor, kind, shape, offset] = item.cast<
        std::tuple<std::string, at::Tensor, std::string, std::vector<int64_t>, int64_t>>();
    if (kind == "rows") {
      tree.SetShardedRows(path, tensor, shape, offset);
    } else if (kind == "flat") {
      tree.SetShardedFlat(path, tensor, shape, offset);
    } else {
      tree.SetTensor(path, tensor);
    }
  }
  for (const auto& [key, value] : scalars) {
    const std::string path = key.cast<std::string>();
    tree.SetScalar(path, ToScalar(path, value));
  }
  return tree;
}

py::dict ScalarsOf(const StateTree& tree) {
  py::dict out;
  for (const auto& [path, value] : tree.scalars()) out[py::str(path)] = FromScalar(value);
  return out;
}

distckpt::CheckpointerOptions Options(int keep_last, int keep_best, const std::string& metric,
                                      bool higher, double timeout, double save_timeout,
                                      int64_t staging_budget) {
  distckpt::CheckpointerOptions o;
  o.device_staging.budget_bytes = staging_budget;
  o.retention.keep_last = keep_last;
  o.retention.keep_best = keep_best;
  o.retention.metric = metric;
  o.retention.lower_is_better = !higher;
  o.collective_timeout_seconds = timeout;
  o.save_timeout_seconds = save_timeout;
  return o;
}

// MPI under mpirun (or a world of one), otherwise the torch.distributed one given.
std::unique_ptr<distckpt::Communicator> MakeCommunicator(const py::object& torch_comm) {
  if (!torch_comm.is_none()) return distckpt_python::MakeTorchCommunicator(torch_comm);
  EnsureMpi();
  return distckpt::MakeDefaultCommunicator();
}

class Checkpointer {
 public:
  // `torch_comm`, `async_comm`: TorchComm objects for a job started without mpirun, or None.
  Checkpointer(const std::string& root, const distckpt::CheckpointerOptions& options,
               const py::object& torch_comm, py::object async_comm)
      : comm_(MakeCommunicator(torch_comm)),
        ckpt_(std::make_unique<distckpt::Checkpointer>(root, *comm_, options)),
        root_(root),
        options_(options),
        async_comm_(std::move(async_comm)) {}
  ~Checkpointer() {
    if (async_ && async_->in_flight()) {
      py::gil_scoped_release unlocked;  // the background save may need the GIL to finish
      async_.reset();
    }
  }

  std::string Save(const py::list& entries, const py::dict& scalars, int64_t step,
                   const std::string& tag) {
    const StateTree tree = MakeTree(entries, scalars);
    py::gil_scoped_release unlocked;
    return ckpt_->Save(tree, step, tag);
  }
  // `dir` empty: the newest under root. Returns (the directory loaded, its scalars).
  py::tuple Load(const std::string& dir, const py::list& entries, bool fall_back,
                 const py::object& log) {
    StateTree tree = MakeTree(entries, py::dict());
    std::string loaded;
    {
      py::gil_scoped_release unlocked;
      distckpt::LoadOptions load;
      load.device_staging = options_.device_staging;
      load.fall_back = fall_back;
      load.on_fall_back = [&](const std::string& why) {
        if (comm_->rank() != 0 || log.is_none()) return;
        py::gil_scoped_acquire locked;
        log(why);
      };
      loaded = ckpt_->Load(dir, tree, load);
    }
    return py::make_tuple(loaded, ScalarsOf(tree));
  }
  std::optional<std::string> Latest() {
    py::gil_scoped_release unlocked;
    return ckpt_->Latest();
  }
  std::string LatestReason() const { return ckpt_->latest_reason(); }
  // The save in the background (one in flight); a second object with its own communicator.
  void SaveAsync(const py::list& entries, const py::dict& scalars, int64_t step,
                 const std::string& tag) {
    const StateTree tree = MakeTree(entries, scalars);
    py::gil_scoped_release unlocked;
    if (!async_) {
      // The background thread votes over a communicator of its own.
      if (async_comm_.is_none()) {
        async_ = std::make_unique<distckpt::AsyncCheckpointer>(root_, options_);
      } else {
        py::gil_scoped_acquire locked;
        async_ = std::make_unique<distckpt::AsyncCheckpointer>(
            root_, options_, distckpt_python::MakeTorchCommunicator(async_comm_()));
      }
    }
    async_->SaveAsync(tree, step, tag);
  }
  std::string Wait() {
    py::gil_scoped_release unlocked;
    return async_ ? async_->Wait() : std::string();
  }
  void Barrier() {
    distckpt::ThrowIfError(distckpt::AgreeOnStatus(*comm_, distckpt::Status::Ok()));
  }
  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }

 private:
  std::unique_ptr<distckpt::Communicator> comm_;
  std::unique_ptr<distckpt::Checkpointer> ckpt_;
  std::string root_;
  distckpt::CheckpointerOptions options_;
  py::object async_comm_;  // makes the async save's TorchComm (collective), or None
  std::unique_ptr<distckpt::AsyncCheckpointer> async_;
};

// Every tensor of a checkpoint (path, dtype name, shape) and its scalars; one process.
py::tuple Describe(const std::string& dir) {
  distckpt::Manifest m = distckpt::ValueOrThrow(distckpt::ReadManifest(dir));
  py::list tensors;
  for (const auto& t : m.tensors) {
    tensors.append(py::make_tuple(t.path, distckpt::DtypeName(t.dtype), t.global_shape));
  }
  py::dict scalars;
  for (const auto& [path, value] : m.scalars) scalars[py::str(path)] = FromScalar(value);
  return py::make_tuple(tensors, scalars, m.step);
}

// Loads on this process alone, whatever the launch.
py::dict LoadLocal(const std::string& dir, const py::list& entries) {
  auto comm = distckpt::MakeLocalCommunicator();
  distckpt::Checkpointer ckpt("", *comm);  // loads the directory given; no root of its own
  StateTree tree = MakeTree(entries, py::dict());
  {
    py::gil_scoped_release unlocked;
    ckpt.Load(dir, tree);
  }
  return ScalarsOf(tree);
}

void Export(const std::string& dir, const std::string& out, bool model_only,
            const std::string& format) {
  py::gil_scoped_release unlocked;
  if (format == "safetensors") {
    distckpt::SafetensorsExportOptions options;
    if (model_only) options.prefix = "model_state_dict/";
    distckpt::ThrowIfError(distckpt::ExportSafetensors(dir, out, options).status());
  } else if (format == "pt") {
    distckpt::ExportOptions options;
    options.model_only = model_only;
    distckpt::ThrowIfError(distckpt::ExportCheckpoint(dir, out, options).status());
  } else {
    throw distckpt::Error(
        distckpt::InvalidArgument("format must be 'pt' or 'safetensors', not '" + format + "'"));
  }
}

py::dict Verify(const std::string& dir) {
  distckpt::VerifyReport report;
  {
    py::gil_scoped_release unlocked;
    report = distckpt::ValueOrThrow(distckpt::VerifyCheckpoint(dir));
  }
  if (!report.ok()) throw distckpt::Error(report.problems.front());
  py::dict out;
  out["tensors"] = report.tensors_checked;
  out["bytes"] = report.bytes_checked;
  return out;
}

py::list List(const std::string& root) {
  py::list out;
  for (const auto& info : distckpt::ListCheckpoints(root)) {
    py::dict d;
    d["dir"] = info.dir;
    d["step"] = info.step;
    d["committed"] = info.committed;
    d["tags"] = info.tags;
    if (info.manifest) {
      for (const char* key : {"epoch", "loss"}) {
        auto it = info.manifest->scalars.find(key);
        if (it != info.manifest->scalars.end()) d[key] = FromScalar(it->second);
      }
    }
    out.append(d);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "distckpt's C++ engine; use the distckpt package";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const distckpt::Error& e) {
      py::object error = py::module_::import("distckpt").attr("Error");
      PyErr_SetObject(error.ptr(),
                      py::make_tuple(e.what(), distckpt::CodeName(e.status().code())).ptr());
    }
  });
  py::class_<Checkpointer>(m, "Checkpointer")
      .def(py::init([](const std::string& root, int keep_last, int keep_best,
                       const std::string& metric, bool higher, double timeout, double save_timeout,
                       int64_t staging_budget, const std::string& local_root, int local_every,
                       int persist_every, int replicas, int local_keep,
                       const py::object& torch_comm, const py::object& async_comm) {
             auto options = Options(keep_last, keep_best, metric, higher, timeout, save_timeout,
                                    staging_budget);
             options.local = {local_root, local_every, replicas, local_keep};
             options.persist_every = persist_every;
             return new Checkpointer(root, options, torch_comm, async_comm);
           }),
           py::arg("root"), py::arg("keep_last"), py::arg("keep_best"), py::arg("metric"),
           py::arg("higher"), py::arg("timeout"), py::arg("save_timeout"),
           py::arg("staging_budget"), py::arg("local_root"), py::arg("local_every"),
           py::arg("persist_every"), py::arg("replicas"), py::arg("local_keep"),
           py::arg("torch_comm"), py::arg("async_comm"))
      .def("save", &Checkpointer::Save)
      .def("load", &Checkpointer::Load)
      .def("latest", &Checkpointer::Latest)
      .def_property_readonly("latest_reason", &Checkpointer::LatestReason)
      .def("save_async", &Checkpointer::SaveAsync)
      .def("wait", &Checkpointer::Wait)
      .def("barrier", &Checkpointer::Barrier)
      .def_property_readonly("rank", &Checkpointer::rank)
      .def_property_readonly("size", &Checkpointer::size);
  m.def("describe", &Describe);
  m.def("load_local", &LoadLocal);
  m.def("export", &Export);
  m.def("verify", &Verify);
  m.def("ls", &List);
  m.def("tag", [](const std::string& dir, const std::string& name) {
    distckpt::ThrowIfError(distckpt::TagCheckpoint(dir, name));
  });
  m.def("find_tag", [](const std::string& root, const std::string& name) {
    return distckpt::ValueOrThrow(distckpt::FindTag(root, name));
  });
  m.attr("version") = distckpt::kLibraryVersion;
}
