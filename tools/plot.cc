// SVG line charts and histogram grids.
#include "tools/plot.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace axeq {
namespace {

std::string Escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                         "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

std::string Text(double x, double y, const std::string& s, int size = 12,
                 const char* anchor = "middle", const std::string& extra = "") {
  return absl::StrFormat(
      "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%d\" text-anchor=\"%s\" "
      "font-family=\"sans-serif\"%s>%s</text>\n",
      x, y, size, anchor, extra, Escape(s));
}

}  // namespace

std::string LineChartSvg(const std::string& title, const std::string& x_label,
                         const std::string& y_label, const std::vector<Series>& series,
                         bool log_y) {
  const double W = 760, H = 480, L = 80, R = 180, T = 50, B = 60;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  auto ty = [&](double y) { return log_y ? std::log10(y) : y; };
  for (const auto& s : series)
    for (auto [x, y] : s.points) {
      if (std::isnan(y) || (log_y && y <= 0)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, ty(y)),
      y1 = std::max(y1, ty(y));
    }
  if (!(x1 >= x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad, y1 += pad;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (ty(y) - y0) / (y1 - y0) * (H - T - B); };
  std::string s = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" "
      "width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      W, H, W, H);
  s += Text(W / 2, 28, title, 16);
  s += absl::StrFormat(
      "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
      "stroke=\"#333\"/>\n",
      L, T, W - L - R, H - T - B);
  // x ticks: integers over the range
  const double xstep = std::max(1.0, std::ceil((x1 - x0) / 10));
  for (double x = std::ceil(x0); x <= x1 + 1e-9; x += xstep) {
    s +=
        absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
                        px(x), T, px(x), H - B);
    s += Text(px(x), H - B + 18, absl::StrFormat("%g", x), 11);
  }
  for (int i = 0; i <= 5; ++i) {
    const double v = y0 + (y1 - y0) * i / 5;
    const double yy = H - B - (v - y0) / (y1 - y0) * (H - T - B);
    s +=
        absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
                        L, yy, W - R, yy);
    s += Text(L - 6, yy + 4, absl::StrFormat("%.3g", log_y ? std::pow(10.0, v) : v), 11, "end");
  }
  s += Text((L + W - R) / 2, H - 18, x_label, 13);
  s += Text(20, (T + H - B) / 2, y_label + (log_y ? " (log scale)" : ""), 13, "middle",
            absl::StrFormat(" transform=\"rotate(-90 20 %.1f)\"", (T + H - B) / 2));
  for (size_t i = 0; i < series.size(); ++i) {
    const char* color = kColors[i % 8];
    std::string path;
    for (auto [x, y] : series[i].points) {
      if (std::isnan(y) || (log_y && y <= 0)) continue;
      absl::StrAppendFormat(&path, "%s%.1f,%.1f", path.empty() ? "" : " ", px(x), py(y));
      s += absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", px(x),
                           py(y), color);
    }
    if (!path.empty())
      s += absl::StrFormat(
          "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"/>\n", path,
          color);
    const double ly = T + 16 + 20 * i;
    s += absl::StrFormat(
        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
        "stroke-width=\"3\"/>\n",
        W - R + 12, ly - 4, W - R + 36, ly - 4, color);
    s += Text(W - R + 42, ly, series[i].name, 12, "start");
  }
  return s + "</svg>\n";
}

std::string HistogramGridSvg(const std::string& title, const std::vector<HistogramPanel>& panels,
                             int columns, const std::string& caption) {
  columns = std::max(1, columns);
  const int rows = static_cast<int>((panels.size() + columns - 1) / columns);
  const double pw = 200, ph = 140, top = 50;
  const double W = columns * pw + 20, H = top + rows * ph + 20;
  int b0 = 64, b1 = 0;
  for (const auto& p : panels) {
    for (const auto& [b, c] : p.counts) b0 = std::min(b0, b), b1 = std::max(b1, b);
    for (const auto& [b, c] : p.reference) b0 = std::min(b0, b), b1 = std::max(b1, b);
    b0 = std::min(b0, p.target), b1 = std::max(b1, p.target);
  }
  if (b1 < b0) b0 = 0, b1 = 1;
  std::string s = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" "
      "width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      W, H, W, H);
  s += Text(W / 2, 28, title, 15);
  for (size_t i = 0; i < panels.size(); ++i) {
    const auto& p = panels[i];
    const double ox = 10 + (i % columns) * pw, oy = top + (i / columns) * ph;
    const double L = ox + 28, R = ox + pw - 10, T = oy + 18, B = oy + ph - 26;
    int maxc = 1;
    for (const auto& [b, c] : p.counts) maxc = std::max(maxc, c);
    for (const auto& [b, c] : p.reference) maxc = std::max(maxc, c);
    const int nb = b1 - b0 + 1;
    const double bw = (R - L) / nb;
    s += Text((L + R) / 2, oy + 12, p.title, 10);
    s += absl::StrFormat(
        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>\n", L, B, R, B);
    for (const auto& [b, c] : p.counts) {
      const double h = (B - T) * c / maxc;
      s += absl::StrFormat(
          "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n",
          L + (b - b0) * bw + 1, B - h, bw - 2, h, b > p.target ? "#d62728" : "#1f77b4");
    }
    for (const auto& [b, c] : p.reference) {
      const double h = (B - T) * c / maxc;
      s += absl::StrFormat(
          "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
          "stroke=\"#888\" stroke-width=\"1.5\"/>\n",
          L + (b - b0) * bw + 2, B - h, bw - 4, h);
    }
    const double tx = L + (p.target - b0 + 1) * bw;  // right edge of the target bin
    s += absl::StrFormat(
        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\" "
        "stroke-dasharray=\"4,3\"/>\n",
        tx, T - 4, tx, B);
    for (int b = b0; b <= b1; b += std::max(1, nb / 6))
      s += Text(L + (b - b0 + 0.5) * bw, B + 12, std::to_string(b), 9);
    s += Text(ox + 8, (T + B) / 2, std::to_string(maxc), 9, "start");
  }
  s += Text(W / 2, H - 4, caption, 11);
  return s + "</svg>\n";
}

}  // namespace axeq
