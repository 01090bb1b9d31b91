// The `axeq` command line: registers the commands (cli/*_cmd.cc) and runs the one given.
#include "cli/commands.h"

int main(int argc, char** argv) {
  using namespace axeq::cli;
  CLI::App app{
      "axeq: accumulator-aware post-training quantization (GPFQ/OPTQ + AXE) with overflow "
      "certificates"};
  app.require_subcommand(1);
  RemoteFlags remote;
  remote.Add(app);
  std::vector<Command> commands = {AddQuantize(app, remote), AddVerify(app),
                                   AddSimulate(app),         AddSweep(app, remote),
                                   AddLlama2cCapture(app),   AddLlama2cEval(app)};
  for (auto& c : AddJobCommands(app, remote)) commands.push_back(std::move(c));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  for (auto& c : commands)
    if (c.app->parsed()) return c.run();
  return kExitUsage;
}
