// Package sessions records chats with their activations, replays them and exports them.
package sessions
