package runc

import (
	"context"
	"fmt"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Update implements runtime.Backend: runc update --resources.
func (b *libBackend) Update(ctx context.Context, id string, r *specs.LinuxResources) error {
	c, err := b.get(id)
	if err != nil {
		return err
	}
	// Config is a shallow copy: its Cgroups and Resources are the live
	// container's, shared with its cgroup manager, and Set rolls a refused
	// update back to them. The update goes to a copy of its own.
	config := c.Config()
	live := config.Cgroups.Resources
	if live == nil {
		live = &cgroups.Resources{} // nothing to roll back to, nothing shared
	}
	config.Cgroups = cloneCgroup(config.Cgroups)
	applyResources(&config, r)
	// As runc update, skip the device rules, which keeps those a device
	// plugin added; in the rollback of a refused update too, which
	// applies the live resources. Only for this Set: libcontainer refuses
	// to start a process in a container whose config has the flag (runc's
	// CLI never keeps it: state.json leaves it out). startMu orders these
	// writes against that check, the flag's only other reader.
	b.startMu.Lock()
	defer b.startMu.Unlock()
	live.SkipDevices, config.Cgroups.SkipDevices = true, true
	err = c.Set(config)
	live.SkipDevices, config.Cgroups.SkipDevices = false, false
	if err != nil {
		return fmt.Errorf("update container %s: %w", id, libError(err))
	}
	return nil
}

// cloneCgroup copies a cgroup configuration deeply enough for
// applyResources: the structs, and the device lists whose entries it
// changes in place. What it only replaces (maps, pointers to values) stays
// shared.
func cloneCgroup(cg *cgroups.Cgroup) *cgroups.Cgroup {
	c := *cg
	if cg.Resources == nil {
		c.Resources = &cgroups.Resources{}
		return &c
	}
	r := *cg.Resources
	r.BlkioWeightDevice = cloneEntries(r.BlkioWeightDevice)
	r.BlkioThrottleReadBpsDevice = cloneEntries(r.BlkioThrottleReadBpsDevice)
	r.BlkioThrottleWriteBpsDevice = cloneEntries(r.BlkioThrottleWriteBpsDevice)
	r.BlkioThrottleReadIOPSDevice = cloneEntries(r.BlkioThrottleReadIOPSDevice)
	r.BlkioThrottleWriteIOPSDevice = cloneEntries(r.BlkioThrottleWriteIOPSDevice)
	c.Resources = &r
	return &c
}

func cloneEntries[T any](s []*T) []*T {
	if s == nil {
		return nil
	}
	out := make([]*T, len(s))
	for i, e := range s {
		v := *e
		out[i] = &v
	}
	return out
}

// applyResources updates a container's cgroup configuration as runc 1.5.3's
// "update --resources" does (update.go): the same fields, the same
// defaults for what the request leaves out.
func applyResources(config *configs.Config, in *specs.LinuxResources) {
	r := specs.LinuxResources{
		Memory:  &specs.LinuxMemory{CheckBeforeUpdate: ptr(false)},
		CPU:     &specs.LinuxCPU{},
		BlockIO: &specs.LinuxBlockIO{},
		Pids:    &specs.LinuxPids{},
	}
	if in.Memory != nil {
		m := *in.Memory
		if m.CheckBeforeUpdate == nil {
			m.CheckBeforeUpdate = ptr(false)
		}
		r.Memory = &m
	}
	if in.CPU != nil {
		r.CPU = in.CPU
	}
	if in.BlockIO != nil {
		r.BlockIO = in.BlockIO
	}
	if in.Pids != nil {
		r.Pids = in.Pids
	}
	r.Unified = in.Unified
	if r.Memory.Limit != nil && *r.Memory.Limit == -1 && r.Memory.Swap == nil {
		r.Memory.Swap = ptr[int64](0)
	}
	if r.CPU.Idle != nil && r.CPU.Shares == nil {
		r.CPU.Shares = ptr[uint64](0)
	}
	res := config.Cgroups.Resources
	if r.BlockIO.Weight != nil {
		res.BlkioWeight = *r.BlockIO.Weight
	}
	if r.BlockIO.LeafWeight != nil {
		res.BlkioLeafWeight = *r.BlockIO.LeafWeight
	}
	for _, wd := range r.BlockIO.WeightDevice {
		res.BlkioWeightDevice = upsertWeightDevice(res.BlkioWeightDevice, wd)
	}
	for _, td := range r.BlockIO.ThrottleReadBpsDevice {
		res.BlkioThrottleReadBpsDevice = upsertThrottleDevice(res.BlkioThrottleReadBpsDevice, td)
	}
	for _, td := range r.BlockIO.ThrottleWriteBpsDevice {
		res.BlkioThrottleWriteBpsDevice = upsertThrottleDevice(res.BlkioThrottleWriteBpsDevice, td)
	}
	for _, td := range r.BlockIO.ThrottleReadIOPSDevice {
		res.BlkioThrottleReadIOPSDevice = upsertThrottleDevice(res.BlkioThrottleReadIOPSDevice, td)
	}
	for _, td := range r.BlockIO.ThrottleWriteIOPSDevice {
		res.BlkioThrottleWriteIOPSDevice = upsertThrottleDevice(res.BlkioThrottleWriteIOPSDevice, td)
	}
	var (
		p uint64
		q int64
	)
	if r.CPU.Period != nil {
		p = *r.CPU.Period
	}
	if r.CPU.Quota != nil {
		q = *r.CPU.Quota
	}
	switch {
	case (p == 0 && q == 0) || (p != 0 && q != 0):
		res.CpuPeriod, res.CpuQuota = p, q
	case p != 0:
		res.CpuPeriod = p
	default:
		res.CpuQuota = q
	}
	res.CpuBurst = r.CPU.Burst
	if r.CPU.Shares != nil {
		res.CpuShares = *r.CPU.Shares
		res.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(*r.CPU.Shares)
	}
	if r.CPU.RealtimePeriod != nil {
		res.CpuRtPeriod = *r.CPU.RealtimePeriod
	}
	if r.CPU.RealtimeRuntime != nil {
		res.CpuRtRuntime = *r.CPU.RealtimeRuntime
	}
	res.CpusetCpus = r.CPU.Cpus
	res.CpusetMems = r.CPU.Mems
	if r.Memory.Limit != nil {
		res.Memory = *r.Memory.Limit
	}
	res.CPUIdle = r.CPU.Idle
	if r.Memory.Reservation != nil {
		res.MemoryReservation = *r.Memory.Reservation
	}
	if r.Memory.Swap != nil {
		res.MemorySwap = *r.Memory.Swap
	}
	if r.Memory.CheckBeforeUpdate != nil {
		res.MemoryCheckBeforeUpdate = *r.Memory.CheckBeforeUpdate
	}
	res.PidsLimit = r.Pids.Limit
	res.Unified = r.Unified
}

func upsertWeightDevice(devices []*cgroups.WeightDevice, wd specs.LinuxWeightDevice) []*cgroups.WeightDevice {
	for i := len(devices) - 1; i >= 0; i-- {
		if devices[i].Major != wd.Major || devices[i].Minor != wd.Minor {
			continue
		}
		if wd.Weight != nil {
			devices[i].Weight = *wd.Weight
		}
		if wd.LeafWeight != nil {
			devices[i].LeafWeight = *wd.LeafWeight
		}
		return devices
	}
	var weight, leafWeight uint16
	if wd.Weight != nil {
		weight = *wd.Weight
	}
	if wd.LeafWeight != nil {
		leafWeight = *wd.LeafWeight
	}
	return append(devices, cgroups.NewWeightDevice(wd.Major, wd.Minor, weight, leafWeight))
}

func upsertThrottleDevice(devices []*cgroups.ThrottleDevice, td specs.LinuxThrottleDevice) []*cgroups.ThrottleDevice {
	for i := len(devices) - 1; i >= 0; i-- {
		if devices[i].Major == td.Major && devices[i].Minor == td.Minor {
			devices[i].Rate = td.Rate
			return devices
		}
	}
	return append(devices, cgroups.NewThrottleDevice(td.Major, td.Minor, td.Rate))
}
