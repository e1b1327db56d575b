// libtorch's operator profiler for package engine/torch (see profile.go).
#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "errbuf.h"
#include "profile.h"

namespace {

namespace prof = torch::autograd::profiler;

struct Session {
  std::string path;
};

std::string shapeKey(const std::vector<std::vector<int64_t>> &shapes) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shapes.size(); i++) {
    if (i > 0) {
      s << ", ";
    }
    s << "[";
    for (size_t j = 0; j < shapes[i].size(); j++) {
      if (j > 0) {
        s << ", ";
      }
      s << shapes[i][j];
    }
    s << "]";
  }
  s << "]";
  return s.str();
}

struct Totals {
  int64_t count = 0;
  double selfUs = 0, totalUs = 0;
};

struct Open {
  const prof::LegacyEvent *push;
  double childUs;
};

// summarise gives every operator (name and input shapes) its call count, total time
// and self time (total less the operators it called), from each thread's push/pop
// ranges, which nest.
std::map<std::pair<std::string, std::string>, Totals> summarise(const prof::thread_event_lists &lists) {
  std::map<std::pair<std::string, std::string>, Totals> out;
  for (const auto &events : lists) {
    std::vector<Open> stack;
    for (const auto &e : events) {
      if (e.kind() == prof::EventKind::PushRange) {
        stack.push_back({&e, 0});
      } else if (e.kind() == prof::EventKind::PopRange && !stack.empty()) {
        Open o = stack.back();
        stack.pop_back();
        const double us = o.push->cpuElapsedUs(e);
        auto &t = out[{o.push->name(), shapeKey(o.push->shapes())}];
        t.count++;
        t.totalUs += us;
        t.selfUs += us - o.childUs;
        if (!stack.empty()) {
          stack.back().childUs += us;
        }
      }
    }
  }
  return out;
}

} // namespace

extern "C" void *sptctl_profile_start(const char *path, char *err, int n) {
  try {
    std::ofstream probe(path);
    if (!probe) {
      sptctl::setErr(err, n, "cannot write the profile file");
      return nullptr;
    }
    prof::enableProfilerLegacy(torch::profiler::impl::ProfilerConfig(
        torch::profiler::impl::ProfilerState::CPU, /*report_input_shapes=*/true));
    return new Session{path};
  } catch (const std::exception &e) {
    sptctl::setErr(err, n, e.what());
  } catch (...) {
    sptctl::setErr(err, n, "unknown C++ exception");
  }
  return nullptr;
}

extern "C" int sptctl_profile_stop(void *handle, char *err, int n) {
  auto *s = static_cast<Session *>(handle);
  try {
    const auto lists = prof::disableProfilerLegacy();
    const auto sums = summarise(lists);
    std::vector<std::pair<std::pair<std::string, std::string>, Totals>> rows(sums.begin(), sums.end());
    std::sort(rows.begin(), rows.end(), [](const auto &a, const auto &b) { return a.second.selfUs > b.second.selfUs; });
    std::ofstream f(s->path);
    f << "self_ms\ttotal_ms\tcalls\top\tinput_shapes\n";
    for (const auto &r : rows) {
      f << r.second.selfUs / 1000 << "\t" << r.second.totalUs / 1000 << "\t" << r.second.count << "\t"
        << r.first.first << "\t" << r.first.second << "\n";
    }
    f.close();
    delete s;
    if (!f) {
      sptctl::setErr(err, n, "writing the profile file failed");
      return -1;
    }
    return 0;
  } catch (const std::exception &e) {
    sptctl::setErr(err, n, e.what());
  } catch (...) {
    sptctl::setErr(err, n, "unknown C++ exception");
  }
  delete s;
  return -1;
}
