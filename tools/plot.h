// Self-contained SVG plots (no Python needed): a line chart for Pareto frontiers (quality vs
// accumulator bits, one line per method, like the paper's Fig. 1) and a grid of histograms of the
// accumulator bits each layer's channels need versus the target.
#ifndef AXEQ_TOOLS_PLOT_H_
#define AXEQ_TOOLS_PLOT_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace axeq {

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), NaN y = missing
};

// Returns an SVG line chart. log_y plots y on a log10 axis (y must be > 0).
std::string LineChartSvg(const std::string& title, const std::string& x_label,
                         const std::string& y_label, const std::vector<Series>& series, bool log_y);

struct HistogramPanel {
  std::string title;
  std::map<int, int> counts;     // accumulator bits -> number of channels
  std::map<int, int> reference;  // optional second histogram drawn as outlines (e.g. unconstrained)
  int target = 0;                // drawn as a vertical line
};

// Returns an SVG grid of small histograms (shared x range); `caption` explains the colours.
std::string HistogramGridSvg(const std::string& title, const std::vector<HistogramPanel>& panels,
                             int columns, const std::string& caption);

}  // namespace axeq

#endif  // AXEQ_TOOLS_PLOT_H_
