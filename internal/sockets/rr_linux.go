package sockets

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// roundRobin is a reuseport group's eBPF steering program: new connections
// go to the live slots in turn, where the classic program (see
// steeringProgram) can only hash them. A hash spreads many clients evenly,
// but a few long connections unevenly: 64 keep-alive connections from one
// load generator land 24/40 as often as 32/32, and the workers' load with
// them; in turn they land 32/32 every time. Loading it takes CAP_BPF
// (root, in practice); without it the group keeps the classic program.
//
// Its state lives in two maps that the primary updates while the program
// runs: socks, the group's sockets by slot (a REUSEPORT_SOCKARRAY), and
// turn, one array element of the layout below. The program takes the next
// turn with an atomic fetch-and-add, so turns are shared by every CPU.
type roundRobin struct {
	socks *ebpf.Map
	turn  *ebpf.Map
	prog  *ebpf.Program
	slots int // capacity of socks and of the live list
	added int // sockets put in socks: files[:added]
}

// The turn element: live slots in turn, then the slot numbers.
const (
	turnLiveOff = 0 // u32: how many slots are live
	turnNextOff = 4 // u32: the next turn, taken by the program
	turnSlotOff = 8 // u32 per live slot
)

// rrCapacity is the least number of slots a program is built for: herd's
// limit on workers, so that a group's program is never replaced by
// another round-robin one (a socket can be in one socket map only, and
// the old map outlives its program's replacement). A group that grows
// past it anyway goes back to the classic program.
const rrCapacity = 4096

// newRoundRobin builds and attaches a round-robin program for files, the
// sockets of one reuseport group in slot order, steering to live.
func newRoundRobin(files []*os.File, live []uint32) (rr *roundRobin, err error) {
	capacity := max(rrCapacity, len(files))
	rr = &roundRobin{slots: capacity}
	defer func() {
		if err != nil {
			rr.close()
		}
	}()
	defer func() {
		if errors.Is(err, unix.EPERM) {
			// What it takes, not cilium's guess about memlock (which
			// kernels since 5.11 account by cgroup).
			err = fmt.Errorf("%w: loading BPF programs needs root or CAP_BPF", ErrNotPermitted)
		}
	}()
	rr.socks, err = ebpf.NewMap(&ebpf.MapSpec{
		Name:       "herd_socks",
		Type:       ebpf.ReusePortSockArray,
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: uint32(capacity),
	})
	if err != nil {
		return rr, fmt.Errorf("create socket map: %w", err)
	}
	rr.turn, err = ebpf.NewMap(&ebpf.MapSpec{
		Name:       "herd_turn",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  uint32(turnSlotOff + 4*capacity),
		MaxEntries: 1,
	})
	if err != nil {
		return rr, fmt.Errorf("create turn map: %w", err)
	}
	rr.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "herd_rr",
		Type:         ebpf.SkReuseport,
		Instructions: rr.program(),
		License:      "Dual MIT/GPL",
	})
	if err != nil {
		return rr, fmt.Errorf("load program: %w", err)
	}
	if err := rr.update(files, live); err != nil {
		return rr, err
	}
	raw, err := files[0].SyscallConn()
	if err != nil {
		return rr, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, rr.prog.FD())
	}); err != nil {
		return rr, err
	}
	if serr != nil {
		return rr, os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_EBPF", serr)
	}
	return rr, nil
}

// update puts every socket of files in socks and makes live the slots
// taken in turn.
func (rr *roundRobin) update(files []*os.File, live []uint32) error {
	if len(files) > rr.slots {
		return fmt.Errorf("%d sockets, the program has room for %d", len(files), rr.slots)
	}
	// A socket already in the map cannot be put there again (EBUSY): only
	// the ones a scale-up added go in. The map holds the socket itself,
	// not the fd, and closing the socket takes it out.
	for ; rr.added < len(files); rr.added++ {
		if err := rr.add(rr.added, files[rr.added]); err != nil {
			return fmt.Errorf("add the socket of slot %d: %w", rr.added, err)
		}
	}
	value := make([]byte, turnSlotOff+4*rr.slots)
	binary.NativeEndian.PutUint32(value[turnLiveOff:], uint32(len(live)))
	for i, slot := range live {
		binary.NativeEndian.PutUint32(value[turnSlotOff+4*i:], slot)
	}
	if err := rr.turn.Update(uint32(0), value, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set live slots: %w", err)
	}
	return nil
}

func (rr *roundRobin) add(slot int, f *os.File) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var uerr error
	if err := raw.Control(func(fd uintptr) {
		uerr = rr.socks.Update(uint32(slot), uint64(fd), ebpf.UpdateAny)
	}); err != nil {
		return err
	}
	return uerr
}

func (rr *roundRobin) close() {
	if rr == nil {
		return
	}
	// The program holds the maps; the group holds the program until a
	// classic one replaces it or its last socket is closed.
	if rr.prog != nil {
		rr.prog.Close()
	}
	if rr.turn != nil {
		rr.turn.Close()
	}
	if rr.socks != nil {
		rr.socks.Close()
	}
}

// program returns the instructions. As with the classic program, a probe
// (an IPv4 packet from 127.254.0.0/16) goes to the slot its source address
// names when the group has a socket there; anything else to the next live
// slot in turn. When a step fails (no live slot, no socket in a slot) the
// program passes without choosing, and the kernel picks by its hash.
func (rr *roundRobin) program() asm.Instructions {
	const (
		ctx      = asm.R6
		value    = asm.R7
		skPass   = 1      // SK_PASS
		hdrNet   = 1      // BPF_HDR_START_NET
		ethProto = 20     // offsetof(struct sk_reuseport_md, eth_protocol)
		key      = -4     // stack: the u32 key of a map call
		addr     = -8     // stack: the packet's IPv4 source address
		ethPIP   = 0x0800 // ETH_P_IP
	)
	// eth_protocol holds the packet's protocol in network byte order.
	var proto [2]byte
	binary.BigEndian.PutUint16(proto[:], ethPIP)
	ipProto := int32(binary.NativeEndian.Uint16(proto[:]))
	// The first two bytes of a probe's source address, read as a native u16.
	net := [2]byte{probeNet >> 8, probeNet & 0xff}
	probeHalf := int32(binary.NativeEndian.Uint16(net[:]))
	// selectSlot is bpf_sk_select_reuseport(ctx, socks, &slot, 0) for
	// the slot in R2.
	selectSlot := asm.Instructions{
		asm.StoreMem(asm.R10, key, asm.R2, asm.Word),
		asm.Mov.Reg(asm.R1, ctx),
		asm.LoadMapPtr(asm.R2, rr.socks.FD()),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, key),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkSelectReuseport.Call(),
	}
	var p asm.Instructions
	p = append(p,
		asm.Mov.Reg(ctx, asm.R1),
		// A probe goes to the slot it names.
		asm.LoadMem(asm.R2, ctx, ethProto, asm.Word),
		asm.JNE.Imm(asm.R2, ipProto, "turn"),
		asm.Mov.Reg(asm.R1, ctx),
		asm.Mov.Imm(asm.R2, 12), // the source address in the IPv4 header
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, addr),
		asm.Mov.Imm(asm.R4, 4),
		asm.Mov.Imm(asm.R5, hdrNet),
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, "turn"),
		asm.LoadMem(asm.R2, asm.R10, addr, asm.Half),
		asm.JNE.Imm(asm.R2, probeHalf, "turn"),
		asm.LoadMem(asm.R2, asm.R10, addr+2, asm.Byte),
		asm.LSh.Imm(asm.R2, 8),
		asm.LoadMem(asm.R3, asm.R10, addr+3, asm.Byte),
		asm.Or.Reg(asm.R2, asm.R3),
	)
	p = append(p, selectSlot...)
	p = append(p,
		asm.JEq.Imm(asm.R0, 0, "pass"), // else no such slot: a client

		// Anything else goes to the next live slot.
		asm.StoreImm(asm.R10, key, 0, asm.Word).WithSymbol("turn"),
		asm.LoadMapPtr(asm.R1, rr.turn.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, key),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(value, asm.R0),
		asm.LoadMem(asm.R2, value, turnLiveOff, asm.Word),
		asm.JEq.Imm(asm.R2, 0, "pass"),
		asm.Mov.Imm(asm.R3, 1),
		fetchAdd(value, asm.R3, turnNextOff),
		asm.Mod.Reg32(asm.R3, asm.R2),
		asm.JGE.Imm(asm.R3, int32(rr.slots), "pass"),
		asm.LSh.Imm(asm.R3, 2),
		asm.Add.Reg(value, asm.R3),
		asm.LoadMem(asm.R2, value, turnSlotOff, asm.Word),
	)
	p = append(p, selectSlot...)
	return append(p,
		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
		asm.Return(),
	)
}

// fetchAdd is src = atomic_fetch_add((u32 *)(dst + off), src). The turn
// must be taken atomically: two CPUs taking SYNs at once would otherwise
// read the same turn, and 64 connections made in a burst land 28/36.
//
// cilium/ebpf v0.22.0 encodes the atomic operation of the instruction in
// its immediate only from Constant, read before it fills Constant in from
// the opcode: without this Constant a FetchAdd is sent as a plain add,
// which leaves src as it was.
func fetchAdd(dst, src asm.Register, off int16) asm.Instruction {
	ins := asm.FetchAdd.Mem(dst, src, asm.Word, off)
	ins.Constant = int64(asm.FetchAdd >> 8)
	return ins
}
