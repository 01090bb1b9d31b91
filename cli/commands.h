// The axeq commands: each registers its flags on a subcommand and runs from them. One file each.
#ifndef AXEQ_CLI_COMMANDS_H_
#define AXEQ_CLI_COMMANDS_H_

#include <functional>
#include <vector>

#include "CLI/CLI.hpp"
#include "cli/common.h"

namespace axeq::cli {

// A registered command: its subcommand and what runs when it was the one parsed.
struct Command {
  CLI::App* app;
  std::function<int()> run;
};

// Each Add* creates its flags (owned by the returned closure) on a new subcommand of `app`.
Command AddQuantize(CLI::App& app, const RemoteFlags& remote);
Command AddVerify(CLI::App& app);
Command AddSimulate(CLI::App& app);
Command AddSweep(CLI::App& app, const RemoteFlags& remote);
Command AddLlama2cCapture(CLI::App& app);
Command AddLlama2cEval(CLI::App& app);
std::vector<Command> AddJobCommands(CLI::App& app,
                                    const RemoteFlags& remote);  // jobs, watch, fetch, cancel

}  // namespace axeq::cli

#endif  // AXEQ_CLI_COMMANDS_H_
