// Command double-go is a herd map line worker: each task is a line on
// stdin holding a number n; the answer is a line with 2n, in order.
//
//	go build -o double-go ./examples/double-go
//	seq 1000000 | herd map -w 2 -- ./double-go
//
// It answers a whole buffer of tasks before it flushes, so a flood of
// tasks costs two system calls per batch, not per task.
package main

import (
	"bufio"
	"os"
	"strconv"
)

func main() {
	in := bufio.NewReaderSize(os.Stdin, 64<<10)
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	defer out.Flush()
	for {
		line, err := in.ReadSlice('\n')
		if err != nil {
			return // stdin closed: the map is over
		}
		n, perr := strconv.ParseInt(string(line[:len(line)-1]), 10, 64)
		if perr != nil {
			out.WriteString(`{"error":"not a number"}` + "\n")
		} else {
			out.Write(strconv.AppendInt(nil, 2*n, 10))
			out.WriteByte('\n')
		}
		if in.Buffered() == 0 {
			out.Flush() // nothing more waiting: answer now
		}
	}
}
