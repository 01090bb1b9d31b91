// `axeq jobs | watch ID | fetch ID --out R | cancel ID`: the server's jobs by id. A fetched result
// is re-verified here before it is written.
#include <memory>

#include "cli/commands.h"
#include "core/verify.h"
#include "formats/result_file.h"
#include "proto/result.h"

namespace axeq::cli {
namespace {

struct JobFlags {
  std::string id, out;
};

int RunList(const RemoteFlags& remote) {
  auto client = remote.Connect();
  if (!client.ok()) return Fail(client.status());
  auto list = (*client)->List();
  if (!list.ok()) return Fail(list.status());
  std::printf("%-34s %-24s %-32s %s\n", "job", "state", "layer", "created (unix ms)");
  for (const auto& j : *list)
    std::printf("%-34s %-24s %-32s %lld\n", j.job_id().c_str(),
                v1::JobState_Name(j.state()).c_str(), j.layer_name().c_str(),
                static_cast<long long>(j.created_unix_ms()));
  return kExitOk;
}

int RunCancel(const JobFlags& f, const RemoteFlags& remote) {
  auto client = remote.Connect();
  if (!client.ok()) return Fail(client.status());
  auto st = (*client)->Cancel(f.id);
  if (!st.ok()) return Fail(st.status());
  std::printf("%s: %s\n", f.id.c_str(), WireStateName(*st).c_str());
  return kExitOk;
}

// watch (out empty) and fetch: follow the job to its end and show (and write) the result.
int RunWatch(const JobFlags& f, const RemoteFlags& remote) {
  auto client = remote.Connect();
  if (!client.ok()) return Fail(client.status());
  ProgressBar bar(true);
  auto r = (*client)->Fetch(
      f.id, [&](double x, const std::string&) { bar.Update(0, 1, f.id, std::min(x, 0.999)); });
  if (!r.ok()) return Fail(r.status());
  bar.Update(0, 1, f.id, 1.0);
  if (r->name.empty()) r->name = f.id;
  PrintLayerTable({*r});
  const Verification v = VerifyCertificate(r->codes, r->certificate);
  std::printf(
      "certificate re-checked here: %s\n",
      v.consistent ? (v.safe ? "consistent, SAFE" : "consistent, UNSAFE") : "NOT CONSISTENT");
  for (const auto& p : v.problems) std::printf("    %s\n", p.c_str());
  if (!f.out.empty()) {
    if (auto s = WriteResultFile(f.out, {*r}); !s.ok()) return Fail(s);
    std::printf("wrote %s\n", f.out.c_str());
  }
  return v.consistent ? kExitOk : kExitFailed;
}

}  // namespace

std::vector<Command> AddJobCommands(CLI::App& app, const RemoteFlags& remote) {
  auto f = std::make_shared<JobFlags>();
  CLI::App* jobs = app.add_subcommand("jobs", "List your jobs on the server");
  CLI::App* watch = app.add_subcommand("watch", "Follow a job by id until it ends");
  CLI::App* fetch =
      app.add_subcommand("fetch", "Fetch a finished job's result into a RESULT.safetensors");
  CLI::App* cancel = app.add_subcommand("cancel", "Cancel a job by id");
  for (CLI::App* a : {watch, fetch, cancel}) a->add_option("id", f->id, "job id")->required();
  fetch->add_option("--out", f->out, "RESULT.safetensors to write")->required();
  return {{jobs, [&remote] { return RunList(remote); }},
          {watch, [f, &remote] { return RunWatch(*f, remote); }},
          {fetch, [f, &remote] { return RunWatch(*f, remote); }},
          {cancel, [f, &remote] { return RunCancel(*f, remote); }}};
}

}  // namespace axeq::cli
