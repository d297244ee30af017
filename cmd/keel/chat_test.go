package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keel-lab/keel/sessions"
)

func TestKillDashNineMidTurnKeepsCompletedTurns(t *testing.T) {
	// A random model whose config names no end-of-sequence token: replies run to --max-tokens.
	dir, _ := sftFixture(t)
	file := filepath.Join(t.TempDir(), "chat.jsonl")
	cmd := keelCmd("chat", "--model", dir, "--record", file, "--max-tokens", "4000", "--temperature", "0")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	stdin.Write([]byte("Count to 3.\n"))
	waitFor(t, "the first reply to finish", 60*time.Second, func() bool {
		raw, _ := os.ReadFile(file)
		return strings.Count(string(raw), `"type":"turn_end"`) >= 2
	})
	stdin.Write([]byte("The little dog\n"))
	// The user turn is fsynced at its end; the reply's tokens are buffered until the reply ends, so kill as soon
	// as the user turn is on disk.
	waitFor(t, "the second user turn", 30*time.Second, func() bool {
		raw, _ := os.ReadFile(file)
		return strings.Count(string(raw), `"type":"turn_end"`) >= 3
	})
	raw, _ := os.ReadFile(file)
	midTurn := strings.Count(string(raw), `"type":"turn_end"`) == 3
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	s, err := sessions.Load(file)
	if err != nil {
		t.Fatalf("the killed session does not load: %v", err)
	}
	turns := s.Turns()
	t.Logf("killed mid-turn: %v; %d events, %d completed turns, warnings %v", midTurn, len(s.Events), len(turns), s.Warnings)
	if !midTurn {
		t.Fatal("the reply finished before the kill: the test did not exercise a turn in flight")
	}
	if len(turns) != 3 || turns[0].Role != "user" || turns[1].Role != "assistant" || turns[1].Text == "" || turns[2].Text != "The little dog" {
		t.Fatalf("completed turns not intact: %+v", turns)
	}
	if len(turns[1].Tokens) == 0 {
		t.Fatal("the completed reply lost its tokens")
	}
}
