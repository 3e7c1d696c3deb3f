package exits

import (
	"encoding/binary"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// encode builds one taskstats exit message of family as the kernel sends
// it: AGGR_PID {PID, STATS}, then AGGR_TGID {TGID, STATS} if tgid > 0.
func encode(family uint16, pid, tgid int) []byte {
	stats := make([]byte, 64) // stands for struct taskstats
	nested := func(typ, idType uint16, id int) []byte {
		v := binary.NativeEndian.AppendUint32(nil, uint32(id))
		inner := append(attr(idType, v), attr(3, stats)...)
		return attr(typ, inner)
	}
	body := nested(typeAggrPID, typePID, pid)
	if tgid > 0 {
		body = append(body, nested(typeAggrTGID, typeTGID, tgid)...)
	}
	msg := make([]byte, nlmsgHdrLen+genlHdrLen, nlmsgHdrLen+genlHdrLen+len(body))
	msg = append(msg, body...)
	binary.NativeEndian.PutUint32(msg, uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], family)
	msg[nlmsgHdrLen] = 2 // TASKSTATS_CMD_NEW
	return msg
}

func attr(typ uint16, v []byte) []byte {
	b := make([]byte, (nlaHdrLen+len(v)+3)&^3)
	binary.NativeEndian.PutUint16(b, uint16(nlaHdrLen+len(v)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[nlaHdrLen:], v)
	return b
}

func parseAll(b []byte, family uint16) []record {
	var got []record
	parse(b, family, func(r record) { got = append(got, r) })
	return got
}

func TestParse(t *testing.T) {
	const family = 31
	ack := make([]byte, nlmsgHdrLen+4) // NLMSG_ERROR, error 0
	binary.NativeEndian.PutUint32(ack, uint32(len(ack)))
	binary.NativeEndian.PutUint16(ack[4:], 2)
	two := append(encode(family, 10, 0), encode(family, 12, 11)...)
	cases := []struct {
		name string
		in   []byte
		want []record
	}{
		{"one thread", encode(family, 10, 0), []record{{pid: 10}}},
		{"last thread of a group", encode(family, 12, 11), []record{{pid: 12, tgid: 11}}},
		{"two messages in one datagram", two, []record{{pid: 10}, {pid: 12, tgid: 11}}},
		{"another family", encode(family+1, 10, 0), nil},
		{"an ack", ack, nil},
		{"cut short", encode(family, 12, 11)[:30], nil},
		{"second message cut short", two[:len(two)-3], []record{{pid: 10}}},
		{"empty", nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, parseAll(tc.in, family), cmp.AllowUnexported(record{})); diff != "" {
				t.Errorf("parse (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParse checks that no datagram makes parse panic or loop, and that
// every record it reports names a process.
func FuzzParse(f *testing.F) {
	const family = 31
	f.Add(encode(family, 10, 0))
	f.Add(encode(family, 12, 11))
	f.Add(append(encode(family, 10, 0), encode(family, 12, 11)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		parse(b, family, func(r record) {
			if r.pid <= 0 && r.tgid <= 0 {
				t.Errorf("record without a process: %+v", r)
			}
		})
	})
}
