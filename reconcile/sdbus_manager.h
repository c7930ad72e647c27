// SystemdManager over D-Bus with sd-bus: org.freedesktop.systemd1 on the
// system bus, or on an explicit address (a container's bus socket in tests).
#pragma once

#include <systemd/sd-bus.h>

#include <memory>
#include <string>

#include "reconcile/systemd.h"

namespace usher::reconcile {

template <auto F>
struct Free {
  void operator()(auto* p) const { F(p); }
};
using BusPtr = std::unique_ptr<sd_bus, Free<sd_bus_flush_close_unref>>;
using BusMessagePtr = std::unique_ptr<sd_bus_message, Free<sd_bus_message_unref>>;
using BusSlotPtr = std::unique_ptr<sd_bus_slot, Free<sd_bus_slot_unref>>;

class SdBusManager final : public SystemdManager {
public:
  // `address` empty: the system bus (sd_bus_open_system, which honours
  // $DBUS_SYSTEM_BUS_ADDRESS). nullptr and `error` set when it cannot connect.
  static std::unique_ptr<SdBusManager> connect(const std::string& address, std::string& error);

  std::optional<UnitStatusMap> observe(const ObserveRequest& request,
                                       std::string& error) override;

protected:
  bool doReload(std::string& error) override;
  bool doEnableUnitFiles(const std::vector<std::string>& units, bool& changed,
                         std::string& error) override;
  bool doDisableUnitFiles(const std::vector<std::string>& units, bool& changed,
                          std::string& error) override;
  std::vector<JobOutcome> doRunJobs(const std::vector<JobRequest>& jobs,
                                    std::chrono::milliseconds timeout) override;

private:
  explicit SdBusManager(BusPtr bus) : bus_(std::move(bus)) {}

  BusPtr bus_;
};

}  // namespace usher::reconcile
